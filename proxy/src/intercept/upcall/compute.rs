//! What an upcall computes: embeddings, chunks or a ranking, by the engine.

use super::{UpcallFunction, UpcallRequest, UpcallService};
use crate::error::ProxyError;

/// A computed upcall answer, as the columns of its rows (ord 1..): embeddings (as `real[]`
/// text) for pgml.embed, chunks for pgml.chunk, (corpus_id, score) best first for pgml.rank.
#[derive(Default)]
pub(super) struct Answer {
    pub(super) embeddings: Vec<String>,
    pub(super) chunks: Vec<String>,
    pub(super) corpus_ids: Vec<i64>,
    pub(super) scores: Vec<f64>,
}

impl UpcallService {
    /// Computes what the request asks for.
    pub(super) async fn compute(&self, request: &UpcallRequest) -> Result<Answer, ProxyError> {
        match &request.function {
            UpcallFunction::Embed => {
                let vectors = self
                    .engine
                    .embed_in(
                        &request.cache_partition,
                        &request.model,
                        request.inputs.clone(),
                        &request.kwargs,
                    )
                    .await?;
                Ok(Answer {
                    embeddings: vectors
                        .iter()
                        .map(|v| pgml_rewriter::format_real_array(v))
                        .collect(),
                    ..Answer::default()
                })
            }
            UpcallFunction::Chunk => {
                let text = request.inputs.first().cloned().unwrap_or_default();
                let (splitter, kwargs) = (request.model.clone(), request.kwargs.clone());
                let chunks = tokio::task::spawn_blocking(move || {
                    pgml_chunk::chunk(&splitter, &text, &kwargs)
                })
                .await
                .map_err(|e| ProxyError::Internal(format!("pgml.chunk task failed: {e}")))??;
                Ok(Answer {
                    chunks,
                    ..Answer::default()
                })
            }
            UpcallFunction::Rank { query } => {
                let ranked = self
                    .ranker
                    .rank(
                        &request.model,
                        query,
                        request.inputs.clone(),
                        &request.kwargs,
                    )
                    .await?;
                Ok(Answer {
                    corpus_ids: ranked.iter().map(|r| r.corpus_id as i64).collect(),
                    scores: ranked.iter().map(|r| r.score).collect(),
                    ..Answer::default()
                })
            }
        }
    }
}
