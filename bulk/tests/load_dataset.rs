//! load_dataset against a real, throwaway Postgres: parquet written here, the bundled sample, the
//! hub cache layout, CSV/JSON lines inference, limit, replacement, offline errors, atomicity.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run

#[path = "support/postgres.rs"]
mod postgres;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, DoubleType, FloatType, Int32Type, Int64Type,
};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use pgml_bulk::{load_dataset, BulkError, DatasetConfig, DatasetReader};
use postgres::TempPostgres;
use serde_json::json;

const SCHEMA: &str = "message m {
  OPTIONAL BYTE_ARRAY title (STRING);
  OPTIONAL INT32 tiny (INTEGER(8,true));
  OPTIONAL INT32 small (INT_16);
  OPTIONAL INT32 stars;
  OPTIONAL INT64 big;
  OPTIONAL FLOAT score32;
  OPTIONAL DOUBLE score64;
  OPTIONAL BOOLEAN ok;
  OPTIONAL GROUP tags (LIST) { REPEATED GROUP list { OPTIONAL INT64 element; } }
}";

/// Writes `rows` rows in row groups of 7: row i has title "t{i}" (NULL every 5th), tiny = i % 100,
/// small = i * 3, stars = i % 5 + 1, big = i * 10^10, score32 = i / 4, score64 = i / 3, ok = i even,
/// tags = [i, i + 1] (empty for i % 3 == 1, NULL for i % 3 == 2).
fn write_parquet(path: &Path, rows: usize) {
    let schema = Arc::new(parse_message_type(SCHEMA).unwrap());
    let mut writer = SerializedFileWriter::new(
        File::create(path).unwrap(),
        schema,
        Arc::new(WriterProperties::new()),
    )
    .unwrap();
    let ids: Vec<usize> = (0..rows).collect();
    for chunk in ids.chunks(7) {
        let mut group = writer.next_row_group().unwrap();
        let full = vec![1i16; chunk.len()];
        let mut index = 0;
        while let Some(mut col) = group.next_column().unwrap() {
            match index {
                0 => {
                    let defs: Vec<i16> = chunk.iter().map(|i| i16::from(i % 5 != 0)).collect();
                    let vals: Vec<ByteArray> = chunk
                        .iter()
                        .filter(|i| *i % 5 != 0)
                        .map(|i| ByteArray::from(format!("t{i}").as_str()))
                        .collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&vals, Some(&defs), None)
                        .unwrap();
                }
                1..=3 => {
                    let vals: Vec<i32> = chunk
                        .iter()
                        .map(|&i| [(i % 100) as i32, (i * 3) as i32, (i % 5 + 1) as i32][index - 1])
                        .collect();
                    col.typed::<Int32Type>()
                        .write_batch(&vals, Some(&full), None)
                        .unwrap();
                }
                4 => {
                    let vals: Vec<i64> = chunk.iter().map(|&i| i as i64 * 10_000_000_000).collect();
                    col.typed::<Int64Type>()
                        .write_batch(&vals, Some(&full), None)
                        .unwrap();
                }
                5 => {
                    let vals: Vec<f32> = chunk.iter().map(|&i| i as f32 / 4.0).collect();
                    col.typed::<FloatType>()
                        .write_batch(&vals, Some(&full), None)
                        .unwrap();
                }
                6 => {
                    let vals: Vec<f64> = chunk.iter().map(|&i| i as f64 / 3.0).collect();
                    col.typed::<DoubleType>()
                        .write_batch(&vals, Some(&full), None)
                        .unwrap();
                }
                7 => {
                    let vals: Vec<bool> = chunk.iter().map(|&i| i % 2 == 0).collect();
                    col.typed::<BoolType>()
                        .write_batch(&vals, Some(&full), None)
                        .unwrap();
                }
                _ => {
                    let (mut vals, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
                    for &i in chunk {
                        match i % 3 {
                            0 => {
                                vals.extend([i as i64, i as i64 + 1]);
                                defs.extend([3, 3]);
                                reps.extend([0, 1]);
                            }
                            1 => {
                                defs.push(1);
                                reps.push(0);
                            }
                            _ => {
                                defs.push(0);
                                reps.push(0);
                            }
                        }
                    }
                    col.typed::<Int64Type>()
                        .write_batch(&vals, Some(&defs), Some(&reps))
                        .unwrap();
                }
            }
            col.close().unwrap();
            index += 1;
        }
        group.close().unwrap();
    }
    writer.close().unwrap();
}

/// The repo's bundled datasets, the test's temporary directory as a dataset directory (and
/// hub cache), no downloads.
fn offline_config(hub: &Path) -> DatasetConfig {
    DatasetConfig {
        dataset_dirs: vec![hub.to_path_buf()],
        allow_downloads: false,
        datasets_dir: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../datasets")),
        hub_cache: hub.to_path_buf(),
        offline: true,
        schema: "pgml".into(),
    }
}

async fn column_types(client: &tokio_postgres::Client, table: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'pgml' AND table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM pgml.\"{table}\""), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn parquet_file_loads_with_postgresml_types_and_exact_values() {
    let pg = TempPostgres::start().unwrap();
    let client = pg.create_db("parquet_values").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("reviews_test.parquet");
    write_parquet(&file, 50);

    let (table, rows) = load_dataset(
        &client,
        file.to_str().unwrap(),
        None,
        None,
        &json!({}),
        &offline_config(tmp.path()),
    )
    .await
    .unwrap();
    assert_eq!((table.as_str(), rows), ("reviews_test", 50));
    let expected: Vec<(String, String)> = [
        ("title", "text"),
        ("tiny", "smallint"),
        ("small", "smallint"),
        ("stars", "integer"),
        ("big", "bigint"),
        ("score32", "real"),
        ("score64", "double precision"),
        ("ok", "boolean"),
        ("tags", "jsonb"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(column_types(&client, "reviews_test").await, expected);
    assert_eq!(count(&client, "reviews_test").await, 50);

    let rows = client
        .query(
            "SELECT title, tiny, small, stars, big, score32, score64, ok, tags::text FROM pgml.reviews_test \
             WHERE big / 10000000000 IN (0, 12, 13, 49) ORDER BY big",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    for (row, i) in rows.iter().zip([0i64, 12, 13, 49]) {
        let title: Option<String> = row.get(0);
        assert_eq!(title, (i % 5 != 0).then(|| format!("t{i}")));
        assert_eq!(row.get::<_, i16>(1), (i % 100) as i16);
        assert_eq!(row.get::<_, i16>(2), (i * 3) as i16);
        assert_eq!(row.get::<_, i32>(3), (i % 5 + 1) as i32);
        assert_eq!(row.get::<_, f32>(5), i as f32 / 4.0);
        assert_eq!(row.get::<_, f64>(6), i as f64 / 3.0);
        assert_eq!(row.get::<_, bool>(7), i % 2 == 0);
        let tags: Option<String> = row.get(8);
        let expected_tags = match i % 3 {
            0 => Some(format!("[{i}, {}]", i + 1)),
            1 => Some("[]".to_string()),
            _ => None,
        };
        assert_eq!(tags, expected_tags, "tags of row {i}");
    }
}

#[tokio::test]
async fn limit_caps_rows_and_a_second_call_replaces_the_table() {
    let pg = TempPostgres::start().unwrap();
    let client = pg.create_db("replace").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("things.parquet");
    write_parquet(&file, 30);
    let config = offline_config(tmp.path());
    let source = file.to_str().unwrap();

    let (_, rows) = load_dataset(&client, source, None, Some(12), &json!({}), &config)
        .await
        .unwrap();
    assert_eq!(rows, 12);
    assert_eq!(count(&client, "things").await, 12);
    let first: Vec<i64> = client
        .query("SELECT big FROM pgml.things ORDER BY big", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        first,
        (0..12).map(|i| i * 10_000_000_000).collect::<Vec<i64>>()
    );

    let (_, rows) = load_dataset(&client, source, None, None, &json!({}), &config)
        .await
        .unwrap();
    assert_eq!(rows, 30);
    assert_eq!(count(&client, "things").await, 30);
    let (_, rows) = load_dataset(&client, source, None, Some(0), &json!({}), &config)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    assert_eq!(count(&client, "things").await, 0);

    let err = load_dataset(&client, source, None, Some(-1), &json!({}), &config)
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "22023");
    let err = load_dataset(&client, source, None, None, &json!({"nope": "x"}), &config)
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "22023");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn bundled_reviews_sample_loads_by_name_with_amazon_reviews_columns() {
    let pg = TempPostgres::start().unwrap();
    let client = pg.create_db("sample").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = offline_config(tmp.path());

    let (table, rows) = load_dataset(&client, "reviews_sample", None, None, &json!({}), &config)
        .await
        .unwrap();
    assert_eq!((table.as_str(), rows), ("reviews_sample", 10_000));
    let types = column_types(&client, "reviews_sample").await;
    let names: Vec<&str> = types.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "marketplace",
            "customer_id",
            "review_id",
            "product_id",
            "product_parent",
            "product_title",
            "product_category",
            "star_rating",
            "helpful_votes",
            "total_votes",
            "vine",
            "verified_purchase",
            "review_headline",
            "review_body",
            "review_date"
        ]
    );
    assert_eq!(types[7].1, "integer");
    assert_eq!(types[10].1, "bigint");
    assert!(types.iter().filter(|(_, t)| t == "text").count() == 10);
    let row = client
        .query_one(
            "SELECT count(DISTINCT review_id), min(star_rating), max(star_rating), \
             bool_and(review_body <> ''), bool_and(helpful_votes <= total_votes) FROM pgml.reviews_sample",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 10_000);
    assert_eq!((row.get::<_, i32>(1), row.get::<_, i32>(2)), (1, 5));
    assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4));

    let (_, rows) = load_dataset(
        &client,
        "reviews_sample",
        None,
        Some(1234),
        &json!({}),
        &config,
    )
    .await
    .unwrap();
    assert_eq!(rows, 1234);
    assert_eq!(count(&client, "reviews_sample").await, 1234);
}

#[tokio::test]
async fn hub_cache_layout_resolves_org_name_and_subset() {
    let pg = TempPostgres::start().unwrap();
    let client = pg.create_db("hub").await.unwrap();
    let hub = tempfile::tempdir().unwrap();
    let repo = hub.path().join("datasets--someorg--shop_reviews");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    let snapshot = repo.join("snapshots/0123abcd");
    for (subset, split, rows) in [
        ("Books", "train", 9),
        ("Books", "test", 4),
        ("Music", "train", 6),
    ] {
        std::fs::create_dir_all(snapshot.join(subset)).unwrap();
        write_parquet(
            &snapshot.join(format!("{subset}/{split}-00000-of-00001.parquet")),
            rows,
        );
    }
    let config = offline_config(hub.path());

    let (table, rows) = load_dataset(
        &client,
        "someorg/shop_reviews",
        Some("Books"),
        None,
        &json!({}),
        &config,
    )
    .await
    .unwrap();
    assert_eq!((table.as_str(), rows), ("shop_reviews", 13));
    let (_, rows) = load_dataset(
        &client,
        "someorg/shop_reviews",
        Some("Books"),
        None,
        &json!({"split": "test"}),
        &config,
    )
    .await
    .unwrap();
    assert_eq!(rows, 4);
    // With a limit and no split, PostgresML reads train[:limit].
    let (_, rows) = load_dataset(
        &client,
        "someorg/shop_reviews",
        Some("Books"),
        Some(100),
        &json!({}),
        &config,
    )
    .await
    .unwrap();
    assert_eq!(rows, 9);
    let (_, rows) = load_dataset(
        &client,
        "someorg/shop_reviews",
        Some("Music"),
        None,
        &json!({}),
        &config,
    )
    .await
    .unwrap();
    assert_eq!(rows, 6);
    assert_eq!(count(&client, "shop_reviews").await, 6);
}

#[tokio::test]
async fn offline_and_not_cached_is_a_clear_error_and_creates_nothing() {
    let hub = tempfile::tempdir().unwrap();
    let config = offline_config(hub.path());
    let err = DatasetReader::open(
        "amazon_us_reviews",
        Some("Video_DVD_v1_00"),
        None,
        &json!({}),
        &config,
    )
    .unwrap_err();
    assert!(matches!(err, BulkError::DatasetNotFound(_)));
    assert_eq!(err.sqlstate(), "58P01");
    let message = err.to_string();
    for needle in [
        "amazon_us_reviews",
        "Video_DVD_v1_00",
        &hub.path()
            .join("datasets--amazon_us_reviews")
            .display()
            .to_string(),
        "datasets/amazon_us_reviews",
        "downloads are disabled",
        "--allow-downloads",
        "dataset directory",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }

    let pg = TempPostgres::start().unwrap();
    let client = pg.create_db("offline").await.unwrap();
    assert!(load_dataset(
        &client,
        "amazon_us_reviews",
        None,
        None,
        &json!({}),
        &config
    )
    .await
    .is_err());
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'amazon_us_reviews'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
}

#[tokio::test]
async fn csv_and_json_lines_infer_types_and_a_bad_row_leaves_the_old_table() {
    let pg = TempPostgres::start().unwrap();
    let client = pg.create_db("text_formats").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = offline_config(tmp.path());

    let csv_dir = tmp.path().join("people");
    std::fs::create_dir(&csv_dir).unwrap();
    std::fs::write(
        csv_dir.join("a.csv"),
        "name,age,height,member\n\"Lee, Ann\",31,1.7,true\nBo,,2,false\n",
    )
    .unwrap();
    std::fs::write(
        csv_dir.join("b.csv"),
        "name,age,height,member\nCy,45,1.5,\n",
    )
    .unwrap();
    let (table, rows) = load_dataset(
        &client,
        csv_dir.to_str().unwrap(),
        None,
        None,
        &json!({}),
        &config,
    )
    .await
    .unwrap();
    assert_eq!((table.as_str(), rows), ("people", 3));
    let types: Vec<String> = column_types(&client, "people")
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(types, ["text", "bigint", "double precision", "boolean"]);
    let row = client
        .query_one(
            "SELECT age, height FROM pgml.people WHERE name = 'Lee, Ann'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, Option<i64>>(0), row.get::<_, f64>(1)),
        (Some(31), 1.7)
    );

    let jsonl = tmp.path().join("events.jsonl");
    std::fs::write(&jsonl, "{\"id\": 1, \"meta\": {\"a\": [1]}, \"v\": 1}\n\n{\"id\": 2, \"v\": 2.5, \"extra\": \"x\"}\n").unwrap();
    let (_, rows) = load_dataset(
        &client,
        jsonl.to_str().unwrap(),
        None,
        None,
        &json!({}),
        &config,
    )
    .await
    .unwrap();
    assert_eq!(rows, 2);
    let types = column_types(&client, "events").await;
    assert_eq!(
        types,
        [
            ("id", "bigint"),
            ("meta", "jsonb"),
            ("v", "double precision"),
            ("extra", "text")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let meta: String = client
        .query_one("SELECT meta::text FROM pgml.events WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(meta, r#"{"a": [1]}"#);

    // A file that breaks after the table was created and rows were copied: nothing changes.
    let mut lines = String::new();
    for i in 0..20_000 {
        lines.push_str(&format!("{{\"id\": {i}, \"v\": {i}}}\n"));
    }
    lines.push_str("{\"id\": oops}\n");
    std::fs::write(&jsonl, lines).unwrap();
    let err = load_dataset(
        &client,
        jsonl.to_str().unwrap(),
        None,
        None,
        &json!({}),
        &config,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("events.jsonl"), "{err}");
    assert_eq!(count(&client, "events").await, 2);
}
