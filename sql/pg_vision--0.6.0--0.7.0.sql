-- pg_vision 0.6.0 -> 0.7.0

-- pg_vision_models() gains text_tower: whether the model embeds text too (embed_text).
-- Appended last, as every new result column of a C function must be: a database still at
-- an older version calls the same C symbol with its older, shorter column list, which is
-- only safe while that list is a prefix of what the library returns
-- (scripts/check_c_functions.py checks it against every released install script).
-- A function's result columns cannot change in place: dropped and created again, with the
-- same privileges (PUBLIC may call it, as before).
DROP FUNCTION pg_vision_models();
CREATE  FUNCTION "pg_vision_models"() RETURNS TABLE (
	"name" TEXT,  /* String */
	"dim" INT,  /* i32 */
	"input_size" TEXT,  /* String */
	"onnx_file" TEXT,  /* String */
	"available" bool,  /* bool */
	"loaded" bool,  /* bool */
	"problem" TEXT,  /* Option < String > */
	"description" TEXT,  /* String */
	"text_tower" bool  /* bool */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pg_vision_models_wrapper';
