-- Every bad input is an ERROR with its SQLSTATE, a message that says what was wrong and a
-- hint that says what to do; the backend survives each one.
\getenv helpers PGV_REGRESS_HELPERS
\i :helpers
\set truncated :testdata '/truncated.png'

-- undecodable bytes (22P03)
SELECT pg_temp.try($$SELECT embed_efficientnet('\xdeadbeef')$$);
SELECT pg_temp.try($$SELECT embed_efficientnet('')$$);
SELECT pg_temp.try(format('SELECT embed_efficientnet(pg_read_binary_file(%L))', :'truncated'));
SELECT pg_temp.try($$SELECT embed_efficientnet(convert_to('data:image/png;base64,iVBORw0KGgo=', 'UTF8'))$$);
SELECT pg_temp.try($$SELECT image_from_base64('not base64!')$$);
SELECT pg_temp.try($$SELECT image_from_base64('data:image/png,rawdata')$$);
-- recognised but unsupported formats (0A000)
SELECT pg_temp.try($$SELECT embed_efficientnet('\x0000001866747970686569630000000000000000')$$);
SELECT pg_temp.try($$SELECT embed_efficientnet('\x716f6966000000010000000103000000')$$);
-- size limits, checked before decoding (54000)
SET pg_vision.max_image_pixels = 100000;
SELECT pg_temp.try(format('SELECT embed_efficientnet(pg_read_binary_file(%L))', :'chelsea'));
RESET pg_vision.max_image_pixels;
SET pg_vision.max_image_bytes = 1000;
SELECT pg_temp.try(format('SELECT image_info(pg_read_binary_file(%L))', :'chelsea'));
RESET pg_vision.max_image_bytes;
-- unknown model, bad names, unknown output (42704, 22023)
SELECT pg_temp.try(format('SELECT embed_image(%L, pg_read_binary_file(%L))', 'resnet', :'chelsea'));
SELECT pg_temp.try(format('SELECT embed_image(%L, pg_read_binary_file(%L))', '../../etc/passwd', :'chelsea'));
SELECT pg_temp.try(format('SELECT embed_image_output(%L, pg_read_binary_file(%L), %L)', 'efficientnet', :'chelsea', 'probs'));
-- a model whose weights are not installed: the error names the command that makes them (58P01)
SELECT pg_temp.try(format('SELECT embed_fclip(pg_read_binary_file(%L))', :'chelsea'));
-- models that do not match their manifests (F0000)
SET pg_vision.model_dir = :'models';
SELECT name, available, problem IS NOT NULL AS has_problem FROM pg_vision_models() ORDER BY name;
SELECT pg_temp.try(format('SELECT embed_image(%L, pg_read_binary_file(%L))', m, :'chelsea'))
  FROM unnest(ARRAY['ghost', 'wrong_dim', 'wrong_input', 'wrong_output', 'broken']) m;
SELECT pg_temp.try(format('SELECT embed_efficientnet(pg_read_binary_file(%L))', :'chelsea'));
RESET pg_vision.model_dir;
-- the backend is alive and still embeds after all of that
SELECT vector_dims(embed_efficientnet(pg_read_binary_file(:'chelsea')));
-- only superusers, and roles they grant SET on the parameter, may point the server at
-- other files (this suite's role has the grant; pgv_nobody has nothing)
SET ROLE pgv_nobody;
SELECT pg_temp.try($$SET pg_vision.model_dir = '/tmp'$$);
SELECT pg_temp.try($$SET pg_vision.onnxruntime_library = '/tmp/x.so'$$);
RESET ROLE;
