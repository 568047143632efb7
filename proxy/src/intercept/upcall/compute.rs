//! What an upcall computes: embeddings, chunks, a ranking or generated text, by the engine
//! (the chunks as a stream, see `chunks`; text generation, see `transform`).

use super::chunks::ChunkStream;
use super::transform;
use super::{UpcallFunction, UpcallRequest, UpcallService};
use crate::error::ProxyError;

/// A computed upcall answer.
pub(super) enum Answer {
    /// Rows written in one statement.
    Rows(Rows),
    /// pgml.chunk: chunks made while they are written, in bounded batches.
    Chunks(ChunkStream),
    /// pgml.transform / transform_stream: JSON texts in the `chunk` column, ord 1.. .
    Texts(Vec<String>),
}

/// The columns of an answer's rows (ord 1..): embeddings (as `real[]` text) for pgml.embed,
/// (corpus_id, score) best first for pgml.rank.
#[derive(Default)]
pub(super) struct Rows {
    pub(super) embeddings: Vec<String>,
    pub(super) corpus_ids: Vec<i64>,
    pub(super) scores: Vec<f64>,
}

impl UpcallService {
    /// Computes what the request asks for (starts making the chunks, for pgml.chunk).
    pub(super) async fn compute(&self, request: &UpcallRequest) -> Result<Answer, ProxyError> {
        // Only pgml.transform's requests may come without a model (see `from_notice`).
        let model = request.model.as_deref().unwrap_or_default();
        match &request.function {
            UpcallFunction::Embed => {
                let vectors = self
                    .engine
                    .embed_in(
                        &request.cache_partition,
                        model,
                        request.inputs.clone(),
                        &request.kwargs,
                    )
                    .await?;
                Ok(Answer::Rows(Rows {
                    embeddings: vectors
                        .iter()
                        .map(|v| pgml_rewriter::format_real_array(v))
                        .collect(),
                    ..Rows::default()
                }))
            }
            UpcallFunction::Chunk => {
                let text = request.inputs.first().cloned().unwrap_or_default();
                Ok(Answer::Chunks(ChunkStream::start(
                    model.to_owned(),
                    text,
                    request.kwargs.clone(),
                )))
            }
            UpcallFunction::Rank { query } => {
                let ranked = self
                    .ranker
                    .rank(model, query, request.inputs.clone(), &request.kwargs)
                    .await?;
                Ok(Answer::Rows(Rows {
                    corpus_ids: ranked.iter().map(|r| r.corpus_id as i64).collect(),
                    scores: ranked.iter().map(|r| r.score).collect(),
                    ..Rows::default()
                }))
            }
            UpcallFunction::Transform { stream: false } => {
                let generate = transform::generate_request("transform", request)?;
                Ok(Answer::Texts(
                    transform::transform(&self.generator, generate).await?,
                ))
            }
            UpcallFunction::Transform { stream: true } => {
                let generate = transform::generate_request("transform_stream", request)?;
                Ok(Answer::Texts(
                    transform::transform_stream(&self.generator, generate).await?,
                ))
            }
        }
    }
}
