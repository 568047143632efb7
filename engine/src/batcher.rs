//! The batcher: one dedicated OS thread that drains a bounded queue of requests from all
//! callers, drops those whose caller has gone, computes identical texts once, tokenizes,
//! sorts by length and runs token-budgeted batches. Never runs on the async runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::config::{BatchLimits, EngineConfig};
use crate::error::EngineError;
use crate::metrics::Counters;
use crate::model::{BatchItem, LoadedModel};

/// Texts of one caller for one model (prompt already prepended).
pub(crate) struct Job {
    pub model: Arc<LoadedModel>,
    pub texts: Vec<String>,
    pub excluded_tokens: usize,
    pub reply: oneshot::Sender<Result<Vec<Vec<f32>>, EngineError>>,
    /// When the caller queued it (for the queue-wait histogram).
    pub queued: Instant,
}

/// Handle to the batcher thread; dropping every handle stops it.
#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Job>,
}

/// Stop collecting once this many texts are pending: enough for several full batches.
const MAX_COLLECT_TEXTS: usize = 1024;

impl Batcher {
    /// Starts the batcher thread.
    pub fn spawn(config: &EngineConfig, counters: Arc<Counters>) -> Result<Batcher, EngineError> {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let worker = Worker {
            rx,
            counters,
            max_wait: config.max_wait,
            config: config.clone(),
        };
        std::thread::Builder::new()
            .name("pgml-engine-batcher".to_string())
            .spawn(move || worker.run())
            .map_err(|e| EngineError::Runtime(format!("cannot start the batcher thread: {e}")))?;
        Ok(Batcher { tx })
    }

    /// Queues a job (waiting while the queue is full) and waits for its vectors.
    pub async fn submit(
        &self,
        model: Arc<LoadedModel>,
        texts: Vec<String>,
        excluded_tokens: usize,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            model,
            texts,
            excluded_tokens,
            reply,
            queued: Instant::now(),
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| EngineError::Cancelled)?;
        answer.await.map_err(|_| EngineError::Cancelled)?
    }
}

struct Worker {
    rx: mpsc::Receiver<Job>,
    counters: Arc<Counters>,
    max_wait: Duration,
    config: EngineConfig,
}

impl Worker {
    fn run(mut self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(err) => {
                tracing::error!(error = %err, "batcher cannot start its timer runtime");
                return;
            }
        };
        while let Some(first) = rt.block_on(self.rx.recv()) {
            let jobs = self.collect(&rt, first);
            self.process(jobs);
        }
        tracing::debug!("batcher stopped: every engine handle dropped");
    }

    /// Gathers the jobs that arrive within max_wait of the first one.
    fn collect(&mut self, rt: &tokio::runtime::Runtime, first: Job) -> Vec<Job> {
        let deadline = Instant::now() + self.max_wait;
        let mut pending = first.texts.len();
        let mut jobs = vec![first];
        while pending < MAX_COLLECT_TEXTS {
            let next = match self.rx.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        None
                    } else {
                        // The timer must be created inside the runtime's context.
                        let rx = &mut self.rx;
                        rt.block_on(async { tokio::time::timeout(left, rx.recv()).await })
                            .ok()
                            .flatten()
                    }
                }
            };
            let Some(job) = next else { break };
            pending += job.texts.len();
            jobs.push(job);
        }
        jobs
    }

    fn process(&self, jobs: Vec<Job>) {
        let mut groups: Vec<Vec<Job>> = Vec::new();
        for job in jobs {
            if job.reply.is_closed() {
                self.counters.abandoned();
                continue;
            }
            match groups
                .iter_mut()
                .find(|g| g.first().is_some_and(|j| Arc::ptr_eq(&j.model, &job.model)))
            {
                Some(group) => group.push(job),
                None => groups.push(vec![job]),
            }
        }
        for group in groups {
            let Some(first) = group.first() else { continue };
            let model = Arc::clone(&first.model);
            let limits = self.config.limits(model.device);
            self.run_group(model, group, limits);
        }
    }

    /// Embeds every job of one model: identical (text, exclusion) pairs are computed once.
    fn run_group(&self, model: Arc<LoadedModel>, jobs: Vec<Job>, limits: BatchLimits) {
        let started = Instant::now();
        for job in &jobs {
            self.counters
                .queue_wait(started.saturating_duration_since(job.queued));
        }
        let mut unique: Vec<(String, usize)> = Vec::new();
        let mut index: HashMap<(&str, usize), usize> = HashMap::new();
        let mut slots: Vec<Vec<usize>> = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let mut job_slots = Vec::with_capacity(job.texts.len());
            for text in &job.texts {
                let next = index.len();
                let slot = *index
                    .entry((text.as_str(), job.excluded_tokens))
                    .or_insert(next);
                if slot == next {
                    unique.push((text.clone(), job.excluded_tokens));
                }
                job_slots.push(slot);
            }
            slots.push(job_slots);
        }
        let total: usize = slots.iter().map(Vec::len).sum();
        self.counters.deduplicated(total - unique.len());
        drop(index);
        match self.embed_unique(&model, unique, limits) {
            Ok(vectors) => {
                for (job, job_slots) in jobs.into_iter().zip(slots) {
                    let out = job_slots.iter().map(|&s| vectors[s].clone()).collect();
                    // A caller that left meanwhile simply does not read its answer.
                    let _ = job.reply.send(Ok(out));
                }
            }
            Err(err) => {
                tracing::warn!(model = %model.id, error = %err, "batch failed");
                let reason = err.to_string();
                for job in jobs {
                    let err = EngineError::Inference {
                        model: model.id.clone(),
                        reason: reason.clone(),
                    };
                    let _ = job.reply.send(Err(err));
                }
            }
        }
    }

    fn embed_unique(
        &self,
        model: &LoadedModel,
        unique: Vec<(String, usize)>,
        limits: BatchLimits,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let started = Instant::now();
        let (texts, excluded): (Vec<String>, Vec<usize>) = unique.into_iter().unzip();
        let encodings =
            model
                .tokenizer
                .encode_batch(texts)
                .map_err(|reason| EngineError::Inference {
                    model: model.id.clone(),
                    reason,
                })?;
        self.counters.tokenized(started.elapsed());
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); encodings.len()];
        let mut start = 0;
        while start < order.len() {
            // Sorted ascending, so the last member sets the padded length.
            let mut end = start + 1;
            while end < order.len()
                && end - start < limits.texts
                && (end - start + 1) * encodings[order[end]].get_ids().len() <= limits.tokens
            {
                end += 1;
            }
            let chunk = &order[start..end];
            let items: Vec<BatchItem<'_>> = chunk
                .iter()
                .map(|&i| BatchItem {
                    encoding: &encodings[i],
                    excluded_tokens: excluded[i],
                })
                .collect();
            let t = Instant::now();
            let out = model.forward(&items)?;
            self.counters.batch(items.len(), t.elapsed());
            for (&i, v) in chunk.iter().zip(out) {
                vectors[i] = v;
            }
            start = end;
        }
        Ok(vectors)
    }
}
