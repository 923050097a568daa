-- A ReSys.Shop-shaped catalogue: products and their images, embedded by the trigger on
-- insert, searched with HNSW indexes. Used by `make demo`; psql -f it into any database.
CREATE EXTENSION IF NOT EXISTS pg_vision CASCADE;

CREATE TABLE IF NOT EXISTS products (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL,
    sku        text NOT NULL UNIQUE,
    price      numeric(10, 2) NOT NULL CHECK (price >= 0),
    category   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS product_images (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    product_id             uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    position               int NOT NULL DEFAULT 0,
    image                  bytea,
    checksum               text,
    embedding_efficientnet vector(1280),
    embedding_fclip        vector(512),
    created_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS product_images_product_id ON product_images (product_id);
-- Vectors stay in the heap (5 KB + 2 KB fit a page) instead of TOAST: the planner then
-- sees what a sequential scan really reads and uses the HNSW indexes for searches.
ALTER TABLE product_images ALTER COLUMN embedding_efficientnet SET STORAGE PLAIN,
                           ALTER COLUMN embedding_fclip SET STORAGE PLAIN;

-- Embeds every inserted or re-uploaded image with EfficientNet. Fashion-CLIP is not
-- listed, because its weights need `make fclip` (internet); once installed, add
-- 'embedding_fclip:fclip' after the efficientnet argument. on_error=null stores a row whose
-- image cannot be embedded with NULL embeddings and records the failure in pg_vision_errors.
DROP TRIGGER IF EXISTS product_images_embed ON product_images;
CREATE TRIGGER product_images_embed
    BEFORE INSERT OR UPDATE OF image ON product_images
    FOR EACH ROW EXECUTE FUNCTION pg_vision_embed_trigger(
        'image', 'embedding_efficientnet:efficientnet', 'checksum=checksum', 'on_error=null');

CREATE INDEX IF NOT EXISTS product_images_efficientnet_hnsw
    ON product_images USING hnsw (embedding_efficientnet vector_cosine_ops);
CREATE INDEX IF NOT EXISTS product_images_fclip_hnsw
    ON product_images USING hnsw (embedding_fclip vector_cosine_ops);
