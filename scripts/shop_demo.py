#!/usr/bin/env python3
"""The shop demo: a ReSys.Shop-shaped catalogue (sql/example_schema.sql) filled through the
indexing trigger with real photographs, searched by upload on the HNSW index, and a
retrieval check (precision@4) with edited copies of every photo.

Every product is one real photo (scikit-image's) stored with four edited copies, as a
shop stores several pictures of one product: crop, mirror, small rotation, colour change,
each re-encoded as JPEG. Each of the 5 x N images is then used as an upload; its 4 nearest
neighbours (itself excluded) should be the other pictures of the same product.

Last, it readies the catalogue for the search page (scripts/demo_web.py): the application
role (--app-role, created if missing: LOGIN, no superuser) may read it, and, when a model
with a text tower is installed, every picture's vector of that model is stored in
product_image_text_vectors for search by words.

Usage: shop_demo.py [--photos N] [--app-role pgv_app]
       (prints everything; exit 1 if precision@4 < 0.95)
"""
import argparse
import io
import os
import statistics
import sys
import time

import psycopg
from PIL import Image, ImageEnhance, ImageOps
from psycopg import sql

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import photos  # noqa: E402
from photos import REPO, connect  # noqa: E402


def jpeg(img, quality=85):
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def edits(img):
    """Four edited copies of a product photo, as a shop or a customer's phone makes them."""
    w, h = img.size
    rgb = img.convert("RGB")
    return {
        "crop": jpeg(rgb.crop((int(w * 0.08), int(h * 0.06), int(w * 0.92), int(h * 0.94)))),
        "mirror": jpeg(ImageOps.mirror(rgb)),
        "rotate": jpeg(rgb.rotate(8, resample=Image.BICUBIC, expand=False, fillcolor=(255, 255, 255))),
        "colour": jpeg(ImageEnhance.Color(ImageEnhance.Brightness(rgb).enhance(1.15)).enhance(1.3), quality=70),
    }


def customer_photo(name):
    """An upload that is none of the stored pictures: the product photo `name` cropped,
    mirrored and rotated, JPEG q75, as a customer's own shot of the product."""
    img = photos.photo(name).convert("RGB")
    w, h = img.size
    return jpeg(ImageOps.mirror(img.crop((30, 20, w - 40, h - 10))).rotate(-5, fillcolor=(255, 255, 255)), 75)


def load_catalogue(cur, names):
    cur.execute(open(os.path.join(REPO, "sql", "example_schema.sql")).read())
    cur.execute("TRUNCATE products CASCADE")
    cur.execute("DELETE FROM pg_vision_errors WHERE relation = 'product_images'::regclass")
    rows, t0 = 0, time.perf_counter()
    for i, name in enumerate(names):
        original = photos.shipped(name)
        cur.execute("INSERT INTO products (name, sku, price, category) VALUES (%s, %s, %s, %s) RETURNING id",
                    (name.split(".")[0], f"SKU-{i:04d}", 10 + i, "photo"))
        pid = cur.fetchone()[0]
        images = [("original", original)] + list(edits(Image.open(io.BytesIO(original))).items())
        # One multi-row INSERT per product; the trigger embeds every row.
        cur.executemany("INSERT INTO product_images (product_id, position, image) VALUES (%s, %s, %s)",
                        [(pid, k, data) for k, (_, data) in enumerate(images)])
        rows += len(images)
    return rows, time.perf_counter() - t0


# The storefront's query: the upload is embedded once (a MATERIALIZED CTE, read by
# InitPlans), the HNSW index orders product_images, products are joined to the top k.
SEARCH = """
WITH q AS MATERIALIZED (SELECT embed_efficientnet(%(upload)s) AS v),
     hits AS (SELECT product_id, embedding_efficientnet <=> (SELECT v FROM q) AS distance
                FROM product_images
               ORDER BY embedding_efficientnet <=> (SELECT v FROM q)
               LIMIT %(k)s)
SELECT p.name, round((1 - h.distance)::numeric, 4) AS similarity
  FROM hits h JOIN products p ON p.id = h.product_id
 ORDER BY h.distance"""


def show_search(cur, label, upload):
    t0 = time.perf_counter()
    cur.execute(SEARCH, {"upload": upload, "k": 5})
    rows = cur.fetchall()
    ms = (time.perf_counter() - t0) * 1e3
    print(f"\nsearch by upload: {label} ({len(upload)} bytes), {ms:.1f} ms including the embedding")
    for name, sim in rows:
        print(f"  {name:22} {sim}")


def precision_at_4(cur):
    """Every image as the query; its 4 nearest other images should be its product's."""
    cur.execute("SET enable_seqscan = off")
    cur.execute("SELECT id, product_id FROM product_images ORDER BY product_id, position")
    images = cur.fetchall()
    scores, latencies = [], []
    for image_id, product_id in images:
        t0 = time.perf_counter()
        cur.execute("""SELECT product_id FROM product_images
                        WHERE id <> %(id)s
                        ORDER BY embedding_efficientnet <=> (SELECT embedding_efficientnet FROM product_images WHERE id = %(id)s)
                        LIMIT 4""", {"id": image_id})
        hits = [r[0] for r in cur.fetchall()]
        latencies.append((time.perf_counter() - t0) * 1e3)
        scores.append(sum(h == product_id for h in hits) / 4)
    cur.execute("RESET enable_seqscan")
    return statistics.mean(scores), len(images), statistics.median(latencies)


# Models tried for search by words, in order: the trained Fashion-CLIP (make fclip), else the
# random-weight fixtures, the small one first (the page labels fixtures as such).
TEXT_MODELS = ("fclip", "clip_fixture", "fclip_fixture")


def text_model(cur):
    """The first available model of TEXT_MODELS that has a text tower, or None."""
    cur.execute("SELECT name FROM pg_vision_models() WHERE available AND text_tower")
    usable = {name for (name,) in cur.fetchall()}
    return next((name for name in TEXT_MODELS if name in usable), None)


def load_text_vectors(cur):
    """Stores every picture's vector of the text model (any dimension: a side table, not a
    column of product_images) and returns the model's name, or None without one."""
    cur.execute("""CREATE TABLE IF NOT EXISTS product_image_text_vectors (
                     image_id  uuid PRIMARY KEY REFERENCES product_images (id) ON DELETE CASCADE,
                     model     text NOT NULL,
                     embedding vector NOT NULL)""")
    cur.execute("DELETE FROM product_image_text_vectors")
    model = text_model(cur)
    if model:
        cur.execute("""INSERT INTO product_image_text_vectors (image_id, model, embedding)
                       SELECT id, %(m)s, embed_image(%(m)s, image) FROM product_images WHERE image IS NOT NULL""",
                    {"m": model})
    return model


def grant_app_role(cur, role):
    """The role the search page connects as: LOGIN, no superuser, SELECT on the catalogue."""
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    if not cur.fetchone():
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(sql.Identifier(role)))
    cur.execute(sql.SQL("GRANT SELECT ON products, product_images, product_image_text_vectors TO {}")
                .format(sql.Identifier(role)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--app-role", default="pgv_app", help="the role the search page connects as")
    args = ap.parse_args()
    # Every still picture of photos.PHOTOS (photographs first), not the animated GIF.
    names = photos.names("photo", "other", "artwork")[: args.photos]
    with connect() as conn, conn.cursor() as cur:
        rows, secs = load_catalogue(cur, names)
        print(f"catalogue: {len(names)} products, {rows} images inserted through the trigger in {secs:.1f} s "
              f"({rows / secs:.1f} rows/s, EfficientNet-Lite0 + SHA-256 checksum per row)")
        cur.execute("SELECT count(*), count(embedding_efficientnet), count(checksum) FROM product_images")
        total, embedded, checksummed = cur.fetchone()
        print(f"  {embedded}/{total} embedded, {checksummed}/{total} checksummed")
        cur.execute("SELECT count(*) FROM pg_vision_errors WHERE relation = 'product_images'::regclass")
        print(f"  {cur.fetchone()[0]} rows recorded in pg_vision_errors")

        chelsea = photos.shipped("chelsea.png")
        show_search(cur, "chelsea.png, as stored", chelsea)
        edited = customer_photo("chelsea.png")
        show_search(cur, "chelsea, cropped + mirrored + rotated, JPEG q75", edited)

        # 100 rows are cheaper to scan than to look up: show the plan as the planner picks
        # it for a real catalogue.
        cur.execute("SET enable_seqscan = off")
        cur.execute("EXPLAIN (COSTS OFF) " + SEARCH, {"upload": edited, "k": 5})
        plan = [r[0] for r in cur.fetchall()]
        cur.execute("RESET enable_seqscan")
        print("\nplan (enable_seqscan off, as at catalogue scale): "
              + " / ".join(line.strip() for line in plan if "Scan" in line or "Limit" in line))

        p4, n, med = precision_at_4(cur)
        print(f"\nretrieval check: precision@4 = {p4:.3f} over {n} queries "
              f"({len(names)} photos x 5 pictures; HNSW, cosine; median query {med:.1f} ms)")
        if p4 < 0.95:
            print("FAIL: precision@4 below 0.95")
            return 1

        t0 = time.perf_counter()
        model = load_text_vectors(cur)
        grant_app_role(cur, args.app_role)
        words = (f"search by words: {model}'s vectors of every picture stored in {time.perf_counter() - t0:.1f} s"
                 if model else "search by words: no model with a text tower is installed")
        print(f"\nsearch page ready: role {args.app_role} may read the catalogue; {words}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
