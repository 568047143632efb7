//! Generates `datasets/reviews_sample/reviews_sample.parquet`: deterministic, review-like rows with
//! the 15 columns (and Hugging Face types) of `amazon_us_reviews`. Synthetic text, not real reviews.
//! Run: `cargo run -p pgml-bulk --example generate_reviews_sample -- [rows] [out.parquet]`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run

use std::fs::File;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::ByteArray;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

const SCHEMA: &str = "message schema {
  OPTIONAL BYTE_ARRAY marketplace (STRING);
  OPTIONAL BYTE_ARRAY customer_id (STRING);
  OPTIONAL BYTE_ARRAY review_id (STRING);
  OPTIONAL BYTE_ARRAY product_id (STRING);
  OPTIONAL BYTE_ARRAY product_parent (STRING);
  OPTIONAL BYTE_ARRAY product_title (STRING);
  OPTIONAL BYTE_ARRAY product_category (STRING);
  OPTIONAL INT32 star_rating;
  OPTIONAL INT32 helpful_votes;
  OPTIONAL INT32 total_votes;
  OPTIONAL INT64 vine;
  OPTIONAL INT64 verified_purchase;
  OPTIONAL BYTE_ARRAY review_headline (STRING);
  OPTIONAL BYTE_ARRAY review_body (STRING);
  OPTIONAL BYTE_ARRAY review_date (STRING);
}";

const ROW_GROUP: usize = 1000;

/// splitmix64: tiny, deterministic on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn alnum(&mut self, len: usize) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..len)
            .map(|_| CHARS[self.below(CHARS.len() as u64) as usize] as char)
            .collect()
    }
}

const ADJ: &[&str] = &[
    "Silent",
    "Crimson",
    "Last",
    "Hidden",
    "Broken",
    "Golden",
    "Midnight",
    "Distant",
    "Wild",
    "Frozen",
    "Electric",
    "Forgotten",
    "Little",
    "Endless",
    "Secret",
    "Northern",
];
const NOUN: &[&str] = &[
    "Harbor",
    "Kingdom",
    "Detective",
    "Garden",
    "Voyage",
    "Mountain",
    "Letters",
    "Orchestra",
    "Frontier",
    "Island",
    "Circus",
    "Summer",
    "Engine",
    "River",
    "Lighthouse",
    "Empire",
];
const FORMAT: &[&str] = &[
    "(DVD)",
    "(Blu-ray)",
    "- Complete Season 1",
    "- Collector's Edition",
    "(Widescreen)",
    "- Director's Cut",
];
const GOOD_HEAD: &[&str] = &[
    "Five Stars",
    "Loved it",
    "A classic",
    "Great family movie",
    "Better than I remembered",
    "Worth every penny",
    "Beautifully shot",
    "Highly recommended",
];
const MID_HEAD: &[&str] = &[
    "It was okay",
    "Three Stars",
    "Mixed feelings",
    "Decent but long",
    "Not bad",
];
const BAD_HEAD: &[&str] = &[
    "One Star",
    "Disappointing",
    "Do not buy",
    "Poor transfer",
    "Arrived damaged",
    "Waste of time",
];
const GOOD: &[&str] = &[
    "The acting is superb and the story kept me hooked until the very end.",
    "Picture and sound quality are excellent on this release.",
    "My kids watched it three times in one weekend.",
    "The extras include a thoughtful commentary and deleted scenes.",
    "It arrived quickly and was packaged well.",
    "The soundtrack alone is worth the price.",
    "A touching film that holds up after all these years.",
    "The cinematography is stunning, especially the night scenes.",
];
const MID: &[&str] = &[
    "The first half drags a little but the ending is satisfying.",
    "Some scenes are great, others feel like filler.",
    "The transfer is fine, nothing special.",
    "I expected more from such a famous cast.",
    "Good for a rainy afternoon, though I will not watch it again.",
];
const BAD: &[&str] = &[
    "The disc skipped in several places and the case was cracked.",
    "The plot makes no sense and the dialogue is wooden.",
    "Subtitles were out of sync for the whole movie.",
    "It was region locked and would not play on my player.",
    "I turned it off after twenty minutes.",
    "The audio is muffled and the picture is grainy.",
];

struct Review {
    customer_id: String,
    review_id: String,
    product_id: String,
    product_parent: String,
    product_title: String,
    star_rating: i32,
    helpful_votes: i32,
    total_votes: i32,
    vine: i64,
    verified_purchase: i64,
    review_headline: String,
    review_body: String,
    review_date: String,
}

fn review(rng: &mut Rng) -> Review {
    let star_rating = [1, 2, 3, 4, 5, 5, 5, 4, 5, 3][rng.below(10) as usize];
    let (heads, sentences) = match star_rating {
        4 | 5 => (GOOD_HEAD, GOOD),
        3 => (MID_HEAD, MID),
        _ => (BAD_HEAD, BAD),
    };
    let n_sentences = 1 + rng.below(4) as usize;
    let body: Vec<&str> = (0..n_sentences).map(|_| rng.pick(sentences)).collect();
    let product_title = format!(
        "The {} {} {}",
        rng.pick(ADJ),
        rng.pick(NOUN),
        rng.pick(FORMAT)
    );
    let total_votes = if rng.below(3) == 0 {
        rng.below(40) as i32
    } else {
        0
    };
    let helpful_votes = if total_votes > 0 {
        rng.below(total_votes as u64 + 1) as i32
    } else {
        0
    };
    Review {
        customer_id: (10_000_000 + rng.below(40_000_000)).to_string(),
        review_id: format!("R{}", rng.alnum(13)),
        product_id: format!("B00{}", rng.alnum(7)),
        product_parent: (100_000_000 + rng.below(900_000_000)).to_string(),
        product_title,
        star_rating,
        helpful_votes,
        total_votes,
        vine: i64::from(rng.below(50) == 0),
        verified_purchase: i64::from(rng.below(4) != 0),
        review_headline: rng.pick(heads).to_string(),
        review_body: body.join(" "),
        review_date: format!(
            "{}-{:02}-{:02}",
            2005 + rng.below(11),
            1 + rng.below(12),
            1 + rng.below(28)
        ),
    }
}

fn strings(rows: &[Review], f: impl Fn(&Review) -> &str) -> Vec<ByteArray> {
    rows.iter().map(|r| ByteArray::from(f(r))).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let out = args
        .next()
        .unwrap_or_else(|| "datasets/reviews_sample/reviews_sample.parquet".to_string());
    let mut rng = Rng(0x5EED_2024);
    let reviews: Vec<Review> = (0..rows).map(|_| review(&mut rng)).collect();

    let schema = Arc::new(parse_message_type(SCHEMA)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut writer = SerializedFileWriter::new(File::create(&out)?, schema, props)?;
    for chunk in reviews.chunks(ROW_GROUP) {
        let defs = vec![1i16; chunk.len()];
        let mut group = writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut column) = group.next_column()? {
            use parquet::column::writer::ColumnWriter as W;
            match (index, column.untyped()) {
                (7..=9, W::Int32ColumnWriter(w)) => {
                    let values: Vec<i32> = chunk
                        .iter()
                        .map(|r| [r.star_rating, r.helpful_votes, r.total_votes][index - 7])
                        .collect();
                    w.write_batch(&values, Some(&defs), None)?;
                }
                (10..=11, W::Int64ColumnWriter(w)) => {
                    let values: Vec<i64> = chunk
                        .iter()
                        .map(|r| {
                            if index == 10 {
                                r.vine
                            } else {
                                r.verified_purchase
                            }
                        })
                        .collect();
                    w.write_batch(&values, Some(&defs), None)?;
                }
                (_, W::ByteArrayColumnWriter(w)) => {
                    let values = match index {
                        0 => strings(chunk, |_| "US"),
                        1 => strings(chunk, |r| &r.customer_id),
                        2 => strings(chunk, |r| &r.review_id),
                        3 => strings(chunk, |r| &r.product_id),
                        4 => strings(chunk, |r| &r.product_parent),
                        5 => strings(chunk, |r| &r.product_title),
                        6 => strings(chunk, |_| "Video DVD"),
                        12 => strings(chunk, |r| &r.review_headline),
                        13 => strings(chunk, |r| &r.review_body),
                        _ => strings(chunk, |r| &r.review_date),
                    };
                    w.write_batch(&values, Some(&defs), None)?;
                }
                _ => return Err(format!("column {index}: unexpected writer type").into()),
            }
            column.close()?;
            index += 1;
        }
        group.close()?;
    }
    writer.close()?;
    println!("wrote {rows} rows to {out}");
    Ok(())
}
