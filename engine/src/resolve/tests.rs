use super::*;

fn model_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("onnx")).unwrap();
    std::fs::write(dir.join("onnx/model.onnx"), "onnx").unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    dir
}

#[test]
fn local_directories_are_refused_unless_allowed() {
    let hub = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let dir = model_dir(models.path(), "mine");
    let resolver = Resolver::new(hub.path().to_path_buf(), false);
    for model in ["/etc", dir.to_str().unwrap()] {
        let err = resolver.resolve(model, None, None).unwrap_err();
        assert_eq!(err.sqlstate(), "42501", "{model}: {err}");
        assert!(err.to_string().contains("disabled"), "{err}");
    }
    for model in ["../../x", "./mine", "a/b/c", "file:///etc", "x/../../y", ""] {
        let err = resolver.resolve(model, None, None).unwrap_err();
        assert_eq!(err.sqlstate(), "22023", "{model}: {err}");
    }
    let allowed = resolver.with_model_dirs(vec![models.path().to_path_buf()]);
    let files = allowed.resolve(dir.to_str().unwrap(), None, None).unwrap();
    assert!(files.onnx.ends_with("onnx/model.onnx"));
    assert!(allowed.resolve("mine", None, None).is_ok());
    let err = allowed.resolve("/etc", None, None).unwrap_err();
    assert_eq!(err.sqlstate(), "42501", "{err}");
}

#[test]
fn symlinks_cannot_leave_an_allowed_model_directory() {
    let hub = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let elsewhere = model_dir(outside.path(), "other");
    std::os::unix::fs::symlink(&elsewhere, models.path().join("escape")).unwrap();
    let dir = model_dir(models.path(), "mine");
    std::fs::write(outside.path().join("secret.onnx"), "x").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.onnx"), dir.join("evil.onnx")).unwrap();
    let resolver = Resolver::new(hub.path().to_path_buf(), false)
        .with_model_dirs(vec![models.path().to_path_buf()]);
    let err = resolver.resolve("escape", None, None).unwrap_err();
    assert_eq!(err.sqlstate(), "42501", "{err}");
    let err = resolver
        .resolve("mine", None, Some("evil.onnx"))
        .unwrap_err();
    assert_eq!(err.sqlstate(), "22023", "{err}");
    assert!(
        err.to_string().contains("outside the model repository"),
        "{err}"
    );
    let err = resolver
        .resolve("mine", None, Some("../../../../etc/passwd"))
        .unwrap_err();
    assert_eq!(err.sqlstate(), "22023", "{err}");
}

#[test]
fn uncached_model_with_downloads_off_says_where_it_looked_and_how_to_enable() {
    let hub = tempfile::tempdir().unwrap();
    let resolver = Resolver::new(hub.path().to_path_buf(), false);
    let err = resolver
        .resolve("someone/some-model", None, None)
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, EngineError::ModelNotCached { .. }), "{text}");
    assert!(text.contains("\"someone/some-model\""), "{text}");
    assert!(text.contains(&hub.path().display().to_string()), "{text}");
    assert!(text.contains("downloads are disabled"), "{text}");
    assert!(text.contains("--allow-downloads"), "{text}");
    assert!(text.contains("(revision main)"), "{text}");
    assert!(
        text.contains("there is no models--someone--some-model folder"),
        "{text}"
    );
    let fix = format!(
        "huggingface-cli download someone/some-model --cache-dir {}",
        hub.path().display()
    );
    assert!(text.contains(&fix), "{text}");
    // Each expected file name once, not once per place looked.
    assert_eq!(text.matches("onnx/model.onnx").count(), 1, "{text}");
    assert_eq!(text.matches("tokenizer.json").count(), 1, "{text}");
    let err = resolver
        .resolve("someone/some-model", Some("../../../etc"), None)
        .unwrap_err();
    assert_eq!(err.sqlstate(), "22023", "{err}");
}

#[test]
fn cached_model_without_a_tokenizer_names_the_revision_and_the_file() {
    let hub = tempfile::tempdir().unwrap();
    let snapshot = hub.path().join("models--o--m/snapshots/abc");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(snapshot.join("model.onnx"), "onnx").unwrap();
    std::fs::create_dir_all(hub.path().join("models--o--m/refs")).unwrap();
    std::fs::write(hub.path().join("models--o--m/refs/v1"), "abc").unwrap();
    let resolver = Resolver::new(hub.path().to_path_buf(), false);
    let err = resolver.resolve("o/m", Some("v1"), None).unwrap_err();
    let text = err.to_string();
    assert_eq!(err.sqlstate(), "58000", "{text}");
    assert!(text.contains("(revision v1)"), "{text}");
    assert!(
        text.contains("models--o--m has no tokenizer.json for this revision"),
        "{text}"
    );
    assert!(
        text.contains("huggingface-cli download o/m --revision v1 --cache-dir"),
        "{text}"
    );
    assert_eq!(cached_models(hub.path()), vec!["o/m".to_string()]);
    assert!(cached_models(&hub.path().join("absent")).is_empty());
}

#[test]
fn model_directory_without_weights_names_the_directory_once() {
    let hub = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().join("empty");
    std::fs::create_dir_all(&dir).unwrap();
    let resolver = Resolver::new(hub.path().to_path_buf(), false)
        .with_model_dirs(vec![models.path().to_path_buf()]);
    let err = resolver.resolve("empty", None, None).unwrap_err();
    let text = err.to_string();
    assert_eq!(err.sqlstate(), "58000", "{text}");
    let shown = dir.canonicalize().unwrap().display().to_string();
    assert_eq!(text.matches(&shown).count(), 1, "{text}");
    assert!(
        text.contains("no ONNX weights (one of onnx/model.onnx, model.onnx"),
        "{text}"
    );
}

#[test]
fn hub_cache_files_resolve_through_blobs_inside_the_repo() {
    let hub = tempfile::tempdir().unwrap();
    let repo = hub.path().join("models--o--m");
    let snapshot = repo.join("snapshots/abc");
    std::fs::create_dir_all(snapshot.join("onnx")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc").unwrap();
    std::fs::write(repo.join("blobs/1"), "onnx").unwrap();
    std::os::unix::fs::symlink("../../../blobs/1", snapshot.join("onnx/model.onnx")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", snapshot.join("tokenizer.json")).unwrap();
    let resolver = Resolver::new(hub.path().to_path_buf(), false);
    let err = resolver.resolve("o/m", None, None).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    assert_eq!(err.sqlstate(), "22023", "{err}");
    std::fs::remove_file(snapshot.join("tokenizer.json")).unwrap();
    std::fs::write(repo.join("blobs/2"), "{}").unwrap();
    std::os::unix::fs::symlink("../../blobs/2", snapshot.join("tokenizer.json")).unwrap();
    let files = resolver.resolve("o/m", None, None).unwrap();
    assert!(files.onnx.starts_with(repo.canonicalize().unwrap()));
}
