//! What one call may ask of the engine: the size limits on texts, checked before any work.

use crate::error::EngineError;

/// What one call may ask of the engine (client input is checked before any work is done).
#[derive(Debug, Clone, Copy)]
pub(super) struct InputLimits {
    pub text_bytes: usize,
    pub texts: usize,
    pub call_bytes: usize,
}

impl InputLimits {
    /// 54000 program_limit_exceeded when a text, the number of texts or their total size is
    /// over its limit.
    pub fn check(&self, texts: &[String]) -> Result<(), EngineError> {
        self.check_all(texts.len(), texts.iter().map(String::as_str))
    }

    /// The same over any texts (pgml.rank: the query and its documents).
    pub fn check_all<'a>(
        &self,
        count: usize,
        texts: impl Iterator<Item = &'a str>,
    ) -> Result<(), EngineError> {
        if count > self.texts {
            return Err(EngineError::TooLarge(format!(
                "{count} texts in one call; the limit is {}",
                self.texts
            )));
        }
        let mut total = 0usize;
        for (i, text) in texts.enumerate() {
            if text.len() > self.text_bytes {
                return Err(EngineError::TooLarge(format!(
                    "text {} is {} bytes; the limit is {} bytes per text",
                    i + 1,
                    text.len(),
                    self.text_bytes
                )));
            }
            total = total.saturating_add(text.len());
        }
        if total > self.call_bytes {
            return Err(EngineError::TooLarge(format!(
                "{total} bytes of text in one call; the limit is {} bytes",
                self.call_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EngineConfig;

    const LIMITS: InputLimits = InputLimits {
        text_bytes: 16,
        texts: 3,
        call_bytes: 40,
    };

    #[test]
    fn oversized_input_is_program_limit_exceeded() {
        let texts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(LIMITS.check(&texts(&["a", "b", "c"])).is_ok());
        for bad in [
            texts(&["a", "b", "c", "d"]),
            texts(&["a", &"x".repeat(17)]),
            texts(&[&"x".repeat(15), &"y".repeat(15), &"z".repeat(15)]),
        ] {
            let err = LIMITS.check(&bad).unwrap_err();
            assert_eq!(err.sqlstate(), "54000", "{err}");
            assert!(err.to_string().contains("limit"), "{err}");
        }
    }

    #[test]
    fn default_limits_refuse_a_100_mib_text() {
        let config = EngineConfig::default();
        let limits = InputLimits {
            text_bytes: config.max_text_bytes,
            texts: config.max_texts_per_call,
            call_bytes: config.max_call_bytes,
        };
        let err = limits.check(&["x".repeat(100 << 20)]).unwrap_err();
        assert_eq!(err.sqlstate(), "54000");
        assert!(!config.allow_download, "downloads are off by default");
        assert!(config.allowed_model_dirs.is_empty());
    }
}
