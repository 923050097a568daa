-- A missing or unusable ONNX Runtime library is a clear ERROR, in a fresh backend that
-- has not loaded the runtime yet.
\getenv helpers PGV_REGRESS_HELPERS
\i :helpers
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
