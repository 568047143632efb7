-- pgml-proxy walk-through: the PostgresML embeddings article, through the proxy, offline.
-- psql postgres://postgres:postgres@127.0.0.1:6432/postgres -f docs/walkthrough.sql
-- (the default model, all-MiniLM-L6-v2, stands in for intfloat/e5-small: 384 dimensions too)
\timing on
SELECT * FROM pgml.load_dataset('reviews_sample', NULL, 2000);
SELECT pgml.embed('sentence-transformers/all-MiniLM-L6-v2', 'passage: hi mom') IS NOT NULL AS embedded;
SELECT review_body, pgml.embed('sentence-transformers/all-MiniLM-L6-v2', 'passage: ' || review_body)
  FROM pgml.reviews_sample LIMIT 3;
ALTER TABLE pgml.reviews_sample ADD COLUMN IF NOT EXISTS review_embedding vector(384);
ALTER TABLE pgml.reviews_sample ADD COLUMN IF NOT EXISTS id SERIAL PRIMARY KEY;
UPDATE pgml.reviews_sample
   SET review_embedding = pgml.embed('sentence-transformers/all-MiniLM-L6-v2', 'passage: ' || review_body)
 WHERE id BETWEEN 1 AND 1000 AND review_embedding IS NULL;
DO $$
BEGIN
    FOR i IN 1001..(SELECT max(id) FROM pgml.reviews_sample) BY 10 LOOP
        UPDATE pgml.reviews_sample
           SET review_embedding = pgml.embed('sentence-transformers/all-MiniLM-L6-v2', 'passage: ' || review_body)
         WHERE id BETWEEN i AND i + 10 AND review_embedding IS NULL;
        COMMIT;
    END LOOP;
END;
$$;
CREATE INDEX CONCURRENTLY IF NOT EXISTS reviews_sample_embedding_idx ON pgml.reviews_sample
 USING ivfflat (review_embedding vector_cosine_ops) WITH (lists = 40);
SELECT review_body FROM pgml.reviews_sample
 ORDER BY review_embedding <=> pgml.embed('sentence-transformers/all-MiniLM-L6-v2', 'query: a great movie for kids')::vector
 LIMIT 5;
