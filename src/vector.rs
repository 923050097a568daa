//! pgvector's `vector` type, built directly as a datum: varlena header, int16 dim,
//! int16 unused (0), then dim float4 values (pgvector's `Vector` struct in vector.h).

use pgrx::callconv::{BoxRet, FcInfo};
use pgrx::datum::Datum;
use std::cell::Cell;

use pgrx::pg_guard;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};

use pg_vision_core::output::check_vector;
use pg_vision_core::{Error, Kind};

pub struct Vector(pub Vec<f32>);

impl Vector {
    /// Rejects what pgvector itself would reject: NaN, infinity, empty or oversized vectors
    /// (`pg_vision_core::output::check_vector`).
    pub fn checked(values: Vec<f32>) -> pg_vision_core::Result<Vector> {
        check_vector(&values)?;
        Ok(Vector(values))
    }

    fn to_datum(&self) -> pg_sys::Datum {
        let size = 8 + 4 * self.0.len();
        // SAFETY: palloc0 returns `size` writable bytes in the current memory context;
        // the layout written is pgvector's: int32 vl_len_, int16 dim, int16 unused, float4 x[].
        unsafe {
            let ptr = pg_sys::palloc0(size) as *mut u8;
            pgrx::set_varsize_4b(ptr as *mut pg_sys::varlena, size as i32);
            (ptr.add(4) as *mut i16).write(self.0.len() as i16);
            std::ptr::copy_nonoverlapping(self.0.as_ptr(), ptr.add(8) as *mut f32, self.0.len());
            pg_sys::Datum::from(ptr)
        }
    }
}

impl pgrx::IntoDatum for Vector {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.to_datum())
    }

    /// pgvector's type (`type_oid`). Only needed to build `vector[]` arrays.
    fn type_oid() -> pg_sys::Oid {
        vector_type_oid().unwrap_or_else(|| {
            crate::sql_errors::raise(
                Error::new(Kind::BadModel, "pgvector's type \"vector\" was not found")
                    .with_hint("CREATE EXTENSION vector"),
            )
        })
    }
}

thread_local! {
    /// pgvector's type OID once found; forgotten whenever pg_type changes (a syscache
    /// invalidation callback), so a dropped and re-created pgvector is found again.
    static VECTOR_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    static CALLBACK: Cell<bool> = const { Cell::new(false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_vector_oid(_arg: pg_sys::Datum, _cache: std::ffi::c_int, _hash: u32) {
    VECTOR_OID.with(|o| o.set(pg_sys::InvalidOid));
}

/// pgvector's `vector` type: the type named "vector" in the schema of the extension named
/// "vector", read from the catalog caches. Neither the caller's search_path nor a
/// temporary table named pg_type or pg_extension can change the answer.
pub fn vector_type_oid() -> Option<pg_sys::Oid> {
    let cached = VECTOR_OID.with(Cell::get);
    if cached != pg_sys::InvalidOid {
        return Some(cached);
    }
    if !CALLBACK.with(Cell::get) {
        // SAFETY: registers a plain function for TYPEOID invalidations, once per backend.
        unsafe {
            pg_sys::CacheRegisterSyscacheCallback(
                pg_sys::SysCacheIdentifier::TYPEOID as _,
                Some(forget_vector_oid),
                pg_sys::Datum::from(0),
            )
        };
        CALLBACK.with(|c| c.set(true));
    }
    let oid = lookup_vector_type();
    if oid != pg_sys::InvalidOid {
        VECTOR_OID.with(|o| o.set(oid));
        return Some(oid);
    }
    None
}

fn lookup_vector_type() -> pg_sys::Oid {
    // SAFETY: catalog lookups by name; the names are NUL-terminated constants.
    unsafe {
        let ext = pg_sys::get_extension_oid(c"vector".as_ptr(), true);
        if ext == pg_sys::InvalidOid {
            return pg_sys::InvalidOid;
        }
        let schema = pg_sys::get_extension_schema(ext);
        let mut name: pg_sys::NameData = std::mem::zeroed();
        pg_sys::namestrcpy(&mut name, c"vector".as_ptr());
        pg_sys::GetSysCacheOid(
            pg_sys::SysCacheIdentifier::TYPENAMENSP as _,
            pg_sys::Anum_pg_type_oid as _,
            pg_sys::Datum::from(&mut name as *mut pg_sys::NameData),
            pg_sys::Datum::from(schema),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        )
    }
}

/// PostgreSQL's largest value (MaxAllocSize, 1 GB - 1).
const MAX_VALUE_BYTES: u64 = 0x3fff_ffff;

/// Checks, before any work, that a `vector[]` of `n` elements, `present` of them vectors of
/// `dim` values (the rest NULL), fits in one value.
pub fn check_array_fits(n: usize, present: usize, dim: usize) -> pg_vision_core::Result<()> {
    let bytes = (present as u64).saturating_mul(8 + 4 * dim as u64).saturating_add(24 + (n as u64).div_ceil(8));
    if bytes > MAX_VALUE_BYTES {
        return Err(Error::new(
            Kind::LimitExceeded,
            format!("{present} vectors of {dim} dimensions take {bytes} bytes, over PostgreSQL's limit of {MAX_VALUE_BYTES} bytes for one value"),
        )
        .with_hint("embed the images in several calls (pg_vision_backfill does this for a table)"));
    }
    Ok(())
}

unsafe impl SqlTranslatable for Vector {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(Vector);
    const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("vector"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> = Ok(ReturnsRef::One(SqlMappingRef::literal("vector")));
}

unsafe impl BoxRet for Vector {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(self.to_datum()) }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::Vector;
    use crate::sql_errors::OrRaise;
    use pgrx::prelude::*;

    /// Test-only: a vector from an array, through the same datum builder the embedding
    /// functions use.
    #[pg_extern]
    fn pgv_test_vector(values: Vec<f32>) -> Vector {
        Vector::checked(values).or_raise()
    }

    #[pg_test]
    fn datum_is_pgvectors_layout() {
        // pgvector's own output function and operators read what we built.
        let text = Spi::get_one::<String>("SELECT tests.pgv_test_vector(ARRAY[1, 2.5, -3, 0.125])::text").unwrap();
        assert_eq!(text.as_deref(), Some("[1,2.5,-3,0.125]"));
        let dims = Spi::get_one::<i32>("SELECT vector_dims(tests.pgv_test_vector(array_fill(0.5::real, ARRAY[1280])))")
            .unwrap();
        assert_eq!(dims, Some(1280));
        let eq = Spi::get_one::<bool>("SELECT tests.pgv_test_vector(ARRAY[3, 4]) = '[3,4]'::vector AND vector_norm(tests.pgv_test_vector(ARRAY[3, 4])) = 5").unwrap();
        assert_eq!(eq, Some(true));
        // The typmod cast pgvector applies to vector(n) columns accepts it.
        let ok = Spi::get_one::<i32>("SELECT vector_dims(tests.pgv_test_vector(ARRAY[1, 2, 3])::vector(3))").unwrap();
        assert_eq!(ok, Some(3));
    }

    #[pg_test(error = "vector value NaN at position 1 is not finite")]
    fn nan_is_rejected() {
        Spi::run("SELECT tests.pgv_test_vector(ARRAY[1, 'NaN'::real])").unwrap();
    }

    #[pg_test(error = "vector value inf at position 0 is not finite")]
    fn infinity_is_rejected() {
        Spi::run("SELECT tests.pgv_test_vector(ARRAY['Infinity'::real])").unwrap();
    }

    #[pg_test(error = "a vector must have 1 to 16000 dimensions, got 0")]
    fn empty_is_rejected() {
        Spi::run("SELECT tests.pgv_test_vector(ARRAY[]::real[])").unwrap();
    }
}
