-- A missing or unusable ONNX Runtime library is a clear ERROR, in a fresh backend that
-- has not loaded the runtime yet.
\getenv testdata PGV_TESTDATA
\set chelsea :testdata '/chelsea.png'
CREATE FUNCTION pg_temp.try(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE s text; m text; h text;
BEGIN
  EXECUTE q;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT;
  RETURN s || ' ' || regexp_replace(m, '/[^ ]*/', '<dir>/', 'g')
           || coalesce(E'\n  HINT: ' || nullif(regexp_replace(h, '/[^ ]*/', '<dir>/', 'g'), ''), '');
END $$;
SET pg_vision.onnxruntime_library = '/nonexistent/libonnxruntime.so';
SELECT pg_temp.try(format('SELECT embed_efficientnet(pg_read_binary_file(%L))', :'chelsea'));
SET pg_vision.onnxruntime_library = 'libonnxruntime.so';
SELECT pg_temp.try(format('SELECT embed_efficientnet(pg_read_binary_file(%L))', :'chelsea'));
-- a file that is not a shared library
SET pg_vision.onnxruntime_library = :'chelsea';
SELECT pg_temp.try(format('SELECT embed_efficientnet(pg_read_binary_file(%L))', :'chelsea'));
-- the default works in the same backend once set back
RESET pg_vision.onnxruntime_library;
SELECT vector_dims(embed_efficientnet(pg_read_binary_file(:'chelsea')));
-- once loaded, the runtime cannot change within a connection
SET pg_vision.onnxruntime_library = '/nonexistent/libonnxruntime.so';
SELECT pg_temp.try($$SELECT pg_vision_unload()$$);
SELECT pg_temp.try(format('SELECT embed_efficientnet(pg_read_binary_file(%L))', :'chelsea'));
