//! `ClipTokenizer` against transformers 5's `CLIPTokenizer`: the ids in
//! `tests/fixtures/tokenizer/clip_tokenizer_ids.json` were written by
//! `tests/fixtures/gen/make_tokenizer_fixtures.py` (see there for the format); every case lays out
//! a tokenizer folder here the same way the script did, loads it and must give the same ids for
//! every prompt.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::SdError;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn data_dir() -> PathBuf {
    repo_root().join("data/clip-tokenizer")
}

fn fixture_path() -> PathBuf {
    repo_root().join("tests/fixtures/tokenizer/clip_tokenizer_ids.json")
}

#[derive(Deserialize)]
struct Fixture {
    transformers: String,
    prompts: Vec<String>,
    tokenizer_json_template: Value,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    setup: Setup,
    model_max_length: usize,
    vocab_size: usize,
    pad_token: String,
    pad_id: u32,
    bos_id: u32,
    eos_id: u32,
    added_ids: Vec<u32>,
    encode: Vec<Vec<u32>>,
    tokenize: Vec<Vec<u32>>,
    decode: Vec<String>,
}

#[derive(Deserialize)]
struct Setup {
    base: String,
    #[serde(default)]
    tokenizer_json_patch: Option<Map<String, Value>>,
    tokenizer_config: Option<Value>,
    special_tokens_map: Option<Value>,
    loader: String,
    #[serde(default)]
    add_tokens: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = fixture_path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

/// `data/clip-tokenizer` as a `tokenizer.json` (the fixture's template + vocab + merges), the
/// same file the fixture script wrote.
fn full_tokenizer_json() -> &'static Value {
    static J: OnceLock<Value> = OnceLock::new();
    J.get_or_init(|| {
        let mut tj = fixture().tokenizer_json_template.clone();
        let vocab: Value =
            serde_json::from_str(&std::fs::read_to_string(data_dir().join("vocab.json")).unwrap())
                .unwrap();
        let merges: Vec<Value> = std::fs::read_to_string(data_dir().join("merges.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with("#version"))
            .map(|l| {
                let (a, b) = l.split_once(' ').unwrap();
                Value::Array(vec![a.into(), b.into()])
            })
            .collect();
        tj["model"]["vocab"] = vocab;
        tj["model"]["merges"] = Value::Array(merges);
        tj
    })
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

fn copy_vocab_merges(dir: &Path) {
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(data_dir().join(f), dir.join(f)).unwrap();
    }
}

fn lay_out(setup: &Setup, dir: &Path) {
    match setup.base.as_str() {
        "vocab_merges" => copy_vocab_merges(dir),
        "tokenizer_json" => {
            let mut tj = full_tokenizer_json().clone();
            for (k, v) in setup.tokenizer_json_patch.iter().flatten() {
                tj[k] = v.clone();
            }
            write_json(&dir.join("tokenizer.json"), &tj);
        }
        other => panic!("unknown base {other}"),
    }
    if let Some(cfg) = &setup.tokenizer_config {
        write_json(&dir.join("tokenizer_config.json"), cfg);
    }
    if let Some(map) = &setup.special_tokens_map {
        write_json(&dir.join("special_tokens_map.json"), map);
    }
}

fn check_case(name: &str) {
    let fx = fixture();
    let case = fx
        .cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name} in the fixture"));
    let dir = tempfile::tempdir().unwrap();
    lay_out(&case.setup, dir.path());
    let mut tok = match case.setup.loader.as_str() {
        "from_dir" => ClipTokenizer::from_dir(dir.path()).unwrap(),
        "from_files" => ClipTokenizer::from_files(
            &data_dir().join("vocab.json"),
            &data_dir().join("merges.txt"),
        )
        .unwrap(),
        other => panic!("unknown loader {other}"),
    };
    let to_add: Vec<&str> = case.setup.add_tokens.iter().map(String::as_str).collect();
    if !to_add.is_empty() {
        assert_eq!(
            tok.add_tokens(&to_add).unwrap(),
            case.added_ids,
            "{name}: added ids"
        );
    }
    assert_eq!(tok.max_len(), case.model_max_length, "{name}: max_len");
    assert_eq!(tok.vocab_size(), case.vocab_size, "{name}: vocab_size");
    assert_eq!(tok.pad_token(), case.pad_token, "{name}: pad token");
    assert_eq!(tok.pad_id(), case.pad_id, "{name}: pad id");
    assert_eq!(tok.bos_id(), case.bos_id, "{name}: bos id");
    assert_eq!(tok.eos_id(), case.eos_id, "{name}: eos id");

    let mut failures = Vec::new();
    let mut failing_prompts = 0;
    let prompts: Vec<&str> = fx.prompts.iter().map(String::as_str).collect();
    let batch = tok.encode_batch(&prompts).unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let before = failures.len();
        let mut expected = case.encode[i].clone();
        expected.resize(case.model_max_length, case.pad_id);
        let got = tok.encode(prompt).unwrap();
        if got != expected {
            failures.push(format!(
                "prompt {i} {prompt:?}: encode\n  expected {expected:?}\n  got      {got:?}"
            ));
        }
        if batch[i] != got {
            failures.push(format!(
                "prompt {i} {prompt:?}: encode_batch differs from encode"
            ));
        }
        let got = tok.tokenize(prompt).unwrap();
        if got != case.tokenize[i] {
            failures.push(format!(
                "prompt {i} {prompt:?}: tokenize\n  expected {:?}\n  got      {got:?}",
                case.tokenize[i]
            ));
        }
        let got = tok.decode(&batch[i], true).unwrap();
        if got != case.decode[i] {
            failures.push(format!(
                "prompt {i} {prompt:?}: decode\n  expected {:?}\n  got      {got:?}",
                case.decode[i]
            ));
        }
        if failures.len() > before {
            failing_prompts += 1;
        }
    }
    println!(
        "{name}: {} of {} prompts match transformers {}",
        prompts.len() - failing_prompts,
        prompts.len(),
        fx.transformers
    );
    assert!(
        failures.is_empty(),
        "{name}: {} mismatches with transformers:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

macro_rules! fixture_cases {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_case(stringify!($name));
            }
        )*
        const TESTED_CASES: &[&str] = &[$(stringify!($name)),*];
    };
}

fixture_cases!(
    sd1_bare_from_files,
    sd1_vocab_merges,
    sd2_vocab_merges,
    sd2_config_only,
    sd1_tokenizer_json,
    sd2_tokenizer_json,
    tokenizer_json_only,
    tokenizer_json_other_pipeline,
    sd1_added_tokens,
    sd2_added_tokens,
    v5_saved_added_tokens,
    v4_added_tokens_decoder,
    v4_sd2_added_tokens_decoder,
);

#[test]
fn every_fixture_case_is_tested() {
    let fx = fixture();
    let names: Vec<&str> = fx.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, TESTED_CASES);
    assert!(fx.prompts.len() >= 50, "{} prompts", fx.prompts.len());
    for c in &fx.cases {
        assert_eq!(c.encode.len(), fx.prompts.len(), "{}", c.name);
        assert_eq!(c.tokenize.len(), fx.prompts.len(), "{}", c.name);
        assert_eq!(c.decode.len(), fx.prompts.len(), "{}", c.name);
    }
}

fn shipped() -> ClipTokenizer {
    ClipTokenizer::from_files(
        &data_dir().join("vocab.json"),
        &data_dir().join("merges.txt"),
    )
    .unwrap()
}

#[test]
fn shipped_tokenizer_basics() {
    let tok = shipped();
    assert_eq!(tok.vocab_size(), 49408);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (49406, 49407, 49407)
    );
    assert_eq!(tok.max_len(), 77);
    assert_eq!(tok.token_id("<|startoftext|>"), Some(49406));
    assert_eq!(tok.token_id("cat</w>"), Some(2368));
    assert_eq!(tok.token_id("!"), Some(0));
    assert_eq!(tok.token_id("no such token"), None);
    assert_eq!(tok.id_to_token(2368).as_deref(), Some("cat</w>"));
    let ids = tok.encode("a photo of a cat").unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
    assert!(ids[7..].iter().all(|&i| i == 49407));
    assert_eq!(
        tok.tokenize("a photo of a cat").unwrap(),
        [320, 1125, 539, 320, 2368]
    );
    assert_eq!(
        tok.tokenize_to_strings("a photo of a cat").unwrap(),
        ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]
    );
    assert_eq!(tok.decode(&ids, true).unwrap(), "a photo of a cat");
    // the shipped folder (no config files) reads the same as from_files
    let dir_tok = ClipTokenizer::from_dir(&data_dir()).unwrap();
    assert_eq!(
        dir_tok.encode("A Photo, of: a CAT!").unwrap(),
        tok.encode("A Photo, of: a CAT!").unwrap()
    );
    assert_eq!(dir_tok.vocab_size(), 49408);
}

#[test]
fn empty_prompt_and_truncation() {
    let tok = shipped();
    let ids = tok.encode("").unwrap();
    assert_eq!(ids[..2], [49406, 49407]);
    assert!(ids[2..].iter().all(|&i| i == 49407));
    assert!(tok.tokenize("").unwrap().is_empty());
    assert!(tok.tokenize(" \t\n ").unwrap().is_empty());

    // 75 tokens fit exactly, the 76th is cut; eos is always last
    let fits = "a ".repeat(75);
    let ids = tok.encode(&fits).unwrap();
    assert_eq!(ids.len(), 77);
    assert!(ids[1..76].iter().all(|&i| i == 320));
    assert_eq!(ids[76], 49407);
    let long = "a ".repeat(500);
    assert_eq!(tok.encode(&long).unwrap(), ids);
    assert_eq!(tok.tokenize(&long).unwrap().len(), 500);
    assert_eq!(tok.encode_batch(&[]).unwrap(), Vec::<Vec<u32>>::new());
}

fn folder_with_config(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_vocab_merges(dir.path());
    std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
    dir
}

#[test]
fn pad_token_from_config() {
    // SD 2.x pads with "!" (id 0), which also becomes a token of its own in prompts
    let dir = folder_with_config(r#"{"pad_token": "!", "model_max_length": 77}"#);
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!((tok.pad_token(), tok.pad_id()), ("!", 0));
    let ids = tok.encode("a cat").unwrap();
    assert_eq!(&ids[..4], &[49406, 320, 2368, 49407]);
    assert!(ids[4..].iter().all(|&i| i == 0));
    assert_eq!(tok.tokenize("wow!!!").unwrap(), [2781, 0, 0, 0]);

    // an object with `content` works too, as does a smaller model_max_length
    let dir = folder_with_config(
        r#"{"pad_token": {"content": "<|endoftext|>", "normalized": false}, "bos_token": "<|startoftext|>", "model_max_length": 8}"#,
    );
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!((tok.pad_id(), tok.max_len()), (49407, 8));
    assert_eq!(
        tok.encode("a").unwrap(),
        [49406, 320, 49407, 49407, 49407, 49407, 49407, 49407]
    );
    assert_eq!(
        tok.encode("a a a a a a a a a").unwrap(),
        [49406, 320, 320, 320, 320, 320, 320, 49407]
    );

    // transformers' "no limit" model_max_length means the text encoder's 77
    let dir = folder_with_config(r#"{"model_max_length": 1000000000000000019884624838656}"#);
    assert_eq!(ClipTokenizer::from_dir(dir.path()).unwrap().max_len(), 77);

    // special_tokens_map.json overrides the config (transformers' legacy layout)
    let dir = folder_with_config(r#"{"pad_token": "<|endoftext|>", "model_max_length": 77}"#);
    std::fs::write(
        dir.path().join("special_tokens_map.json"),
        r#"{"pad_token": "!"}"#,
    )
    .unwrap();
    assert_eq!(ClipTokenizer::from_dir(dir.path()).unwrap().pad_id(), 0);
}

#[test]
fn add_tokens_ids_and_duplicates() {
    let mut tok = shipped();
    assert_eq!(tok.add_tokens(&["<s1>", "<s2>"]).unwrap(), [49408, 49409]);
    assert_eq!(tok.vocab_size(), 49410);
    assert_eq!(tok.token_id("<s2>"), Some(49409));
    assert_eq!(
        tok.tokenize("a photo of <s1> <s2>").unwrap(),
        [320, 1125, 539, 49408, 49409]
    );
    assert_eq!(tok.tokenize("a<s1>b").unwrap(), [320, 49408, 321]);
    assert_eq!(tok.tokenize("<S1>").unwrap(), [49408]);
    let ids = tok.encode("a photo of <s1>").unwrap();
    assert_eq!(&ids[..6], &[49406, 320, 1125, 539, 49408, 49407]);

    for bad in [
        &["<s1>"][..],
        &["cat</w>"],
        &["<|endoftext|>"],
        &["!"],
        &[""],
        &["<s3>", "<s3>"],
        &["<s3>", "<s2>"],
    ] {
        match tok.add_tokens(bad) {
            Err(SdError::Tokenizer(msg)) => assert!(!msg.is_empty()),
            other => panic!("add_tokens({bad:?}) gave {other:?}"),
        }
    }
    // nothing was added by the failed calls
    assert_eq!(tok.vocab_size(), 49410);
    assert_eq!(tok.token_id("<s3>"), None);
    assert_eq!(tok.add_tokens(&["<s3>"]).unwrap(), [49410]);
    assert_eq!(tok.add_tokens(&[]).unwrap(), Vec::<u32>::new());
}

fn expect_err(result: fmn_sd::Result<ClipTokenizer>, what: &str) -> SdError {
    match result {
        Ok(t) => panic!("{what}: expected an error, got {t:?}"),
        Err(e) => {
            println!("{what}: {e}");
            e
        }
    }
}

#[test]
fn missing_files_are_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(data_dir().join("merges.txt"), dir.path().join("merges.txt")).unwrap();
    match expect_err(ClipTokenizer::from_dir(dir.path()), "no vocab.json") {
        SdError::Io { path, .. } => assert!(path.ends_with("vocab.json"), "{path:?}"),
        e => panic!("{e:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(data_dir().join("vocab.json"), dir.path().join("vocab.json")).unwrap();
    match expect_err(ClipTokenizer::from_dir(dir.path()), "no merges.txt") {
        SdError::Io { path, .. } => assert!(path.ends_with("merges.txt"), "{path:?}"),
        e => panic!("{e:?}"),
    }
    match expect_err(
        ClipTokenizer::from_dir(&dir.path().join("nope")),
        "no folder",
    ) {
        SdError::Io { path, .. } => assert!(path.ends_with("nope")),
        e => panic!("{e:?}"),
    }
    match expect_err(
        ClipTokenizer::from_files(&dir.path().join("v.json"), &data_dir().join("merges.txt")),
        "from_files without vocab",
    ) {
        SdError::Io { path, .. } => assert!(path.ends_with("v.json")),
        e => panic!("{e:?}"),
    }
}

fn config_error_naming(e: SdError, file: &str, words: &str) {
    match &e {
        SdError::Config { path, message } => {
            assert!(
                path.ends_with(file),
                "{e}: expected the path to name {file}"
            );
            assert!(
                message.contains(words),
                "{e}: expected {words:?} in the message"
            );
        }
        _ => panic!("expected a Config error naming {file}, got {e:?}"),
    }
}

#[test]
fn corrupt_files_are_config_errors() {
    let merges = std::fs::read_to_string(data_dir().join("merges.txt")).unwrap();
    let cases: [(&str, &str, String, &str); 6] = [
        (
            "merges.txt",
            "three parts",
            merges.replacen("i n\n", "i n x\n", 1),
            "line 2",
        ),
        (
            "merges.txt",
            "empty line",
            merges.replacen("i n\n", "\n", 1),
            "line 2",
        ),
        (
            "merges.txt",
            "unknown piece",
            merges.replacen("i n\n", "i \u{2603}\n", 1),
            "not in the vocabulary",
        ),
        (
            "vocab.json",
            "not json",
            "{\"a\": 1,".to_string(),
            "invalid JSON",
        ),
        (
            "vocab.json",
            "not an object",
            "[1, 2]".to_string(),
            "JSON object",
        ),
        (
            "vocab.json",
            "bad id",
            "{\"a\": -1}".to_string(),
            "expected a token id",
        ),
    ];
    for (file, what, content, words) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_vocab_merges(dir.path());
        std::fs::write(dir.path().join(file), content).unwrap();
        config_error_naming(
            expect_err(ClipTokenizer::from_dir(dir.path()), what),
            file,
            words,
        );
    }
}

#[test]
fn bad_configs_are_config_errors() {
    let cases = [
        (
            r#"{"pad_token": "<pad>"}"#,
            "pad_token `<pad>` is not in the vocabulary",
        ),
        (
            r#"{"bos_token": "<s>"}"#,
            "bos_token `<s>` is not in the vocabulary",
        ),
        (
            r#"{"pad_token": 3}"#,
            "pad_token: expected a string or an object",
        ),
        (
            r#"{"eos_token": {"text": "x"}}"#,
            "eos_token: expected a `content` string",
        ),
        (r#"{"model_max_length": "77"}"#, "model_max_length"),
        (r#"{"model_max_length": 1}"#, "no room"),
        (r#"{"added_tokens_decoder": []}"#, "added_tokens_decoder"),
        (r#"{"pad_token": "!""#, "invalid JSON"),
    ];
    for (config, words) in cases {
        let dir = folder_with_config(config);
        config_error_naming(
            expect_err(ClipTokenizer::from_dir(dir.path()), config),
            "tokenizer_config.json",
            words,
        );
    }
    // a bad pad token in special_tokens_map.json names that file
    let dir = folder_with_config("{}");
    std::fs::write(
        dir.path().join("special_tokens_map.json"),
        r#"{"pad_token": "[PAD]"}"#,
    )
    .unwrap();
    config_error_naming(
        expect_err(
            ClipTokenizer::from_dir(dir.path()),
            "special_tokens_map pad",
        ),
        "special_tokens_map.json",
        "pad_token `[PAD]`",
    );
}

#[test]
fn vocabulary_without_clip_tokens_is_config_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vocab.json"),
        r#"{"a": 0, "b": 1, "a</w>": 2, "b</w>": 3, "ab</w>": 4}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\na b</w>\n").unwrap();
    config_error_naming(
        expect_err(
            ClipTokenizer::from_files(
                &dir.path().join("vocab.json"),
                &dir.path().join("merges.txt"),
            ),
            "tiny vocabulary",
        ),
        "vocab.json",
        "bos_token `<|startoftext|>` is not in the vocabulary",
    );
    // with its own special tokens it loads, and pads with what the config says
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": "a</w>", "eos_token": "b</w>", "unk_token": "b</w>", "pad_token": "b</w>", "model_max_length": 5}"#,
    )
    .unwrap();
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.encode("ab").unwrap(), [2, 4, 3, 3, 3]);
    // a special token is cut out of the text wherever it appears, as SD 2.x's `!`
    assert_eq!(tok.tokenize("ab</w>b").unwrap(), [2, 3, 3]);
}

#[test]
fn bad_tokenizer_json_is_config_error() {
    let mut wordpiece = full_tokenizer_json().clone();
    wordpiece["model"]["type"] = "WordPiece".into();
    let mut bad_merge = full_tokenizer_json().clone();
    bad_merge["model"]["merges"][3] = Value::from(7);
    let mut no_vocab = full_tokenizer_json().clone();
    no_vocab["model"].as_object_mut().unwrap().remove("vocab");
    for (tj, words) in [
        (wordpiece, "expected BPE"),
        (bad_merge, "model.merges[3]"),
        (no_vocab, "model.vocab"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_json(&dir.path().join("tokenizer.json"), &tj);
        config_error_naming(
            expect_err(ClipTokenizer::from_dir(dir.path()), words),
            "tokenizer.json",
            words,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{").unwrap();
    config_error_naming(
        expect_err(
            ClipTokenizer::from_dir(dir.path()),
            "truncated tokenizer.json",
        ),
        "tokenizer.json",
        "invalid JSON",
    );
}

/// Every Unicode scalar value against transformers: run
/// `make_tokenizer_fixtures.py --exhaustive OUT` and then
/// `FMN_TOKENIZER_EXHAUSTIVE=OUT cargo test -p fmn-sd --test tokenizer -- --ignored exhaustive`.
#[test]
#[ignore = "needs the large file written by make_tokenizer_fixtures.py --exhaustive"]
fn exhaustive_unicode() {
    let path = std::env::var("FMN_TOKENIZER_EXHAUSTIVE")
        .expect("set FMN_TOKENIZER_EXHAUSTIVE to the file written by --exhaustive");
    let text = std::fs::read_to_string(&path).unwrap();
    let tok = shipped();
    let mut checked = 0usize;
    let mut mismatches = Vec::new();
    for line in text.lines() {
        let (cp, ids) = line.split_once('\t').unwrap();
        let c = char::from_u32(u32::from_str_radix(cp, 16).unwrap()).unwrap();
        let expected: Vec<u32> = ids.split_whitespace().map(|s| s.parse().unwrap()).collect();
        let got = tok.tokenize(&format!("a{c}b {c}{c} {c}x")).unwrap();
        checked += 1;
        if got != expected {
            mismatches.push(format!("U+{cp:0>4}: expected {expected:?} got {got:?}"));
        }
    }
    println!("{checked} code points checked, {} differ", mismatches.len());
    for m in mismatches.iter().take(200) {
        println!("{m}");
    }
    assert!(
        mismatches.is_empty(),
        "{} code points differ",
        mismatches.len()
    );
}

/// Random strings against transformers: run `make_tokenizer_fixtures.py --fuzz OUT` and then
/// `FMN_TOKENIZER_FUZZ=OUT cargo test -p fmn-sd --test tokenizer -- --ignored fuzz`.
#[test]
#[ignore = "needs the file written by make_tokenizer_fixtures.py --fuzz"]
fn fuzz_strings() {
    let path = std::env::var("FMN_TOKENIZER_FUZZ")
        .expect("set FMN_TOKENIZER_FUZZ to the file written by --fuzz");
    let text = std::fs::read_to_string(&path).unwrap();
    let case_tokenizer = |name: &str| {
        let case = fixture().cases.iter().find(|c| c.name == name).unwrap();
        let dir = tempfile::tempdir().unwrap();
        lay_out(&case.setup, dir.path());
        let mut tok = ClipTokenizer::from_dir(dir.path()).unwrap();
        let to_add: Vec<&str> = case.setup.add_tokens.iter().map(String::as_str).collect();
        tok.add_tokens(&to_add).unwrap();
        tok
    };
    let tokenizers = [
        ("sd1_bare", shipped()),
        ("sd1_added", case_tokenizer("sd1_added_tokens")),
        ("sd2_added", case_tokenizer("sd2_added_tokens")),
    ];
    let mut checked = 0usize;
    let mut mismatches = Vec::new();
    for line in text.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        let s = row["text"].as_str().unwrap();
        for (name, tok) in &tokenizers {
            let expected: Vec<u32> = serde_json::from_value(row[name].clone()).unwrap();
            let got = tok.tokenize(s).unwrap();
            checked += 1;
            if got != expected {
                mismatches.push(format!("{name} {s:?}: expected {expected:?} got {got:?}"));
            }
        }
    }
    println!("{checked} strings checked, {} differ", mismatches.len());
    for m in mismatches.iter().take(50) {
        println!("{m}");
    }
    assert!(mismatches.is_empty(), "{} strings differ", mismatches.len());
}
