//! pgml-engine: (model, texts, kwargs) in, embeddings out. Knows nothing about SQL or sockets.
