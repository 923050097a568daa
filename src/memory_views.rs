//! What loaded models hold: `pg_vision_memory` (one row per backend and model tower) and
//! `pg_vision_memory_summary` (budget, used, backends), functions and views. With
//! `shared_preload_libraries` they show the whole cluster; without, this connection.

use pgrx::prelude::*;

use crate::budget;
use crate::guc;

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn pg_vision_memory() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(model, String),
        name!(tower, String),
        name!(bytes, i64),
        name!(last_used, Option<TimestampWithTimeZone>),
        name!(calls, i64),
        name!(shared_file, Option<String>),
        name!(shared_bytes, i64),
    ),
> {
    TableIterator::new(budget::rows().into_iter().map(|r| {
        (
            r.pid,
            r.model,
            r.tower.to_owned(),
            r.bytes as i64,
            TimestampWithTimeZone::try_from(r.last_used).ok(),
            r.calls as i64,
            (!r.shared_file.is_empty()).then_some(r.shared_file),
            r.shared_bytes as i64,
        )
    }))
}

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn pg_vision_memory_summary() -> TableIterator<
    'static,
    (
        name!(budget, i64),
        name!(used, i64),
        name!(backends, i32),
        name!(models, i32),
        name!(evictions, i64),
        name!(cluster_wide, bool),
        name!(private, i64),
        name!(shared, i64),
        name!(shared_files, i32),
    ),
> {
    let s = budget::summary();
    TableIterator::once((
        guc::memory_budget_bytes() as i64,
        s.used as i64,
        s.backends as i32,
        s.models as i32,
        s.evictions as i64,
        budget::is_shared(),
        s.private as i64,
        s.shared as i64,
        s.shared_files as i32,
    ))
}

extension_sql!(
    r#"
CREATE VIEW pg_vision_memory AS SELECT * FROM pg_vision_memory();
COMMENT ON VIEW pg_vision_memory IS 'models held in memory, per backend and tower (whole cluster with shared_preload_libraries): bytes private to the backend, and the shared weights file it maps';
CREATE VIEW pg_vision_memory_summary AS SELECT * FROM pg_vision_memory_summary();
COMMENT ON VIEW pg_vision_memory_summary IS 'pg_vision.memory_budget, bytes in use (private bytes plus each shared weights file once), backends holding models, evictions so far';
"#,
    name = "memory_views",
    requires = [pg_vision_memory, pg_vision_memory_summary]
);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    const MB: i64 = 1024 * 1024;

    /// What a configuration reload does to a SIGHUP setting (a test cannot wait for
    /// pg_reload_conf, which is processed between queries).
    fn set_budget_mb(mb: i64) {
        let value = std::ffi::CString::new(mb.to_string()).unwrap();
        // SAFETY: sets a GUC as the configuration file would.
        unsafe {
            pg_sys::SetConfigOption(
                c"pg_vision.memory_budget".as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SIGHUP,
                pg_sys::GucSource::PGC_S_FILE,
            )
        };
    }

    fn load(model: &str) -> Result<(), String> {
        PgTryBuilder::new(|| Spi::run(&format!("SELECT pg_vision_warmup(ARRAY['{model}'])")).map_err(|e| e.to_string()))
            .catch_when(PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY, |e| match e {
                pg_sys::panic::CaughtError::PostgresError(r) | pg_sys::panic::CaughtError::ErrorReport(r) => {
                    Err(format!("53200 {}", r.message()))
                }
                _ => Err("53200".into()),
            })
            .execute()
    }

    fn loaded() -> Vec<String> {
        Spi::connect(|c| {
            c.select("SELECT name || ':' || tower FROM pg_vision_loaded_models() ORDER BY 1", None, &[])
                .unwrap()
                .map(|r| r.get::<String>(1).unwrap().unwrap())
                .collect()
        })
    }

    #[pg_test]
    fn budget_is_a_size_setting_with_a_default() {
        assert_eq!(Spi::get_one::<String>("SHOW pg_vision.memory_budget").unwrap().as_deref(), Some("1GB"));
        let ctx =
            Spi::get_one::<String>("SELECT context FROM pg_settings WHERE name = 'pg_vision.memory_budget'").unwrap();
        assert_eq!(ctx.as_deref(), Some("sighup"));
        // Without shared_preload_libraries the budget is this connection's.
        assert_eq!(Spi::get_one::<bool>("SELECT cluster_wide FROM pg_vision_memory_summary").unwrap(), Some(false));
    }

    #[pg_test]
    fn loads_are_measured_evicted_and_refused_within_the_budget() {
        // Each backend's own copy of the weights, as without prepared files (models.sh
        // prepares them; pgrx-tests/python/test_shared_weights.py tests that accounting).
        Spi::run("SET pg_vision.shared_weights = off").unwrap();
        Spi::run("SELECT pg_vision_unload()").unwrap();
        load("efficientnet").unwrap();
        let bytes = Spi::get_one::<i64>("SELECT bytes FROM pg_vision_loaded_models() WHERE name = 'efficientnet'")
            .unwrap()
            .unwrap();
        let file = Spi::get_one::<i64>("SELECT file_bytes FROM pg_vision_loaded_models() WHERE name = 'efficientnet'")
            .unwrap()
            .unwrap();
        // Measured, not the file size: ONNX Runtime holds the weights plus its own buffers.
        assert!(bytes > file / 2 && bytes < file * 3, "measured {bytes} for a {file}-byte file");
        let row = Spi::get_one::<i64>(
            "SELECT bytes FROM pg_vision_memory WHERE pid = pg_backend_pid() AND model = 'efficientnet'",
        )
        .unwrap();
        assert_eq!(row, Some(bytes));

        // A model that cannot fit even alone: 53200, and what was loaded stays loaded.
        set_budget_mb(1);
        let err = load("efficientnet_lite2").unwrap_err();
        assert!(err.starts_with("53200 pg_vision: model \"efficientnet_lite2\" (image tower"), "{err}");
        assert!(err.contains("pg_vision.memory_budget (1.0 MB)"), "{err}");
        assert_eq!(loaded(), vec!["efficientnet:image"]);

        // Room for lite2 alone: its first reservation is 2 x its 23.1 MB file (46.3 MB);
        // with efficientnet's ~20 MB that is over 56 MB, so efficientnet is evicted.
        let budget_mb = 56;
        set_budget_mb(budget_mb);
        load("efficientnet_lite2").unwrap();
        assert_eq!(loaded(), vec!["efficientnet_lite2:image"]);
        assert_eq!(Spi::get_one::<i64>("SELECT evictions FROM pg_vision_memory_summary").unwrap(), Some(1));
        let used = Spi::get_one::<i64>("SELECT used FROM pg_vision_memory_summary").unwrap().unwrap();
        assert!(used <= budget_mb * MB);

        // Unloading releases the bytes.
        set_budget_mb(1024);
        assert_eq!(Spi::get_one::<i32>("SELECT pg_vision_unload()").unwrap(), Some(1));
        assert_eq!(Spi::get_one::<i64>("SELECT used FROM pg_vision_memory_summary").unwrap(), Some(0));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM pg_vision_memory").unwrap(), Some(0));
        Spi::run("RESET pg_vision.shared_weights").unwrap();
    }

    #[pg_test]
    fn warmup_loads_every_tower_once() {
        Spi::run("SELECT pg_vision_unload()").unwrap();
        let towers = Spi::get_one::<String>(
            "SELECT string_agg(tower || '=' || loaded_now, ',' ORDER BY tower) FROM pg_vision_warmup(ARRAY['clip_fixture'])",
        )
        .unwrap();
        assert_eq!(towers.as_deref(), Some("image=true,text=true"));
        let again =
            Spi::get_one::<bool>("SELECT bool_or(loaded_now) FROM pg_vision_warmup(ARRAY['clip_fixture'])").unwrap();
        assert_eq!(again, Some(false));
        Spi::run("SELECT pg_vision_unload()").unwrap();
    }
}
