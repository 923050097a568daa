//! pgvector's `vector` type, built directly as a datum: varlena header, int16 dim,
//! int16 unused (0), then dim float4 values (pgvector's `Vector` struct in vector.h).

use pgrx::callconv::{BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin};


use pg_vision_core::{Error, Kind};

/// pgvector's VECTOR_MAX_DIM.
pub const MAX_DIM: usize = 16000;

pub struct Vector(pub Vec<f32>);

impl Vector {
    /// Rejects what pgvector itself would reject: NaN, infinity, empty or oversized vectors.
    pub fn checked(values: Vec<f32>) -> pg_vision_core::Result<Vector> {
        if values.is_empty() || values.len() > MAX_DIM {
            return Err(Error::new(Kind::BadModel, format!("a vector must have 1 to {MAX_DIM} dimensions, got {}", values.len())));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::new(Kind::NonFinite, format!("vector value {} at position {i} is not finite", values[i])));
        }
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

    /// pgvector's type, found through its extension so the search_path does not matter.
    /// Only needed to build `vector[]` arrays.
    fn type_oid() -> pg_sys::Oid {
        pgrx::Spi::get_one::<pg_sys::Oid>(
            "SELECT t.oid FROM pg_type t JOIN pg_extension e ON t.typnamespace = e.extnamespace \
              WHERE e.extname = 'vector' AND t.typname = 'vector'",
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| crate::errors::raise(Error::new(Kind::BadModel, "pgvector's type \"vector\" was not found").with_hint("CREATE EXTENSION vector")))
    }
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
    use crate::errors::OrRaise;
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
        let dims = Spi::get_one::<i32>("SELECT vector_dims(tests.pgv_test_vector(array_fill(0.5::real, ARRAY[1280])))").unwrap();
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
