-- Who may call what. README "Security" has the table and the reasons.
--
-- PUBLIC keeps what only spends the caller's own time and memory and shows nothing of
-- other sessions: the embedding functions, image_info, image_checksum, image_from_base64,
-- pg_vision_models, pg_vision_model_dim, pg_vision_loaded_models, pg_vision_memo, pg_vision_profile,
-- pg_vision_unload (this session's models), the trigger and the backfill (which write only
-- tables the caller may write).
--
-- Warming models up holds budget for as long as the session lives, so it is granted by
-- the administrator: GRANT EXECUTE ON FUNCTION pg_vision_warmup(text[]) TO <role>.
REVOKE EXECUTE ON FUNCTION pg_vision_warmup(text[]) FROM PUBLIC;

-- Every backend's pid, models and use: monitoring roles only, like pg_stat_activity's
-- details.
REVOKE EXECUTE ON FUNCTION pg_vision_memory(), pg_vision_memory_summary() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_vision_memory(), pg_vision_memory_summary() TO pg_monitor;
GRANT SELECT ON pg_vision_memory, pg_vision_memory_summary TO pg_monitor;
