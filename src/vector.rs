//! pgvector's `vector` type, built directly as a datum: varlena header, int16 dim,
//! int16 unused (0), then dim float4 values (pgvector's `Vector` struct in vector.h).

use pgrx::callconv::{BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin};
use pgrx::prelude::*;

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
