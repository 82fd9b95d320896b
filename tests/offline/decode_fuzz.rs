//! Fuzz-style properties of the decode path a repository controls: ERB →
//! YAML → destination merge → Kamal decode (`config::load`), and the
//! secrets parser (`Secrets::load`). The inputs are hostile but structured,
//! so they get past the first byte: YAML from a grammar (anchors, aliases,
//! `<<`, tags, deep nesting, long scalars, control characters, ERB, invalid
//! UTF-8), mutations of `tests/corpus/valid/*.yml`, and dotenv text.
//!
//! Properties: nothing panics or hangs; a refusal is located in the file it
//! is about (line ≥ 1, col ≥ 1); no secrets error quotes a planted value;
//! `$(cmd)` never runs unless allowed on a trusted checkout; expansion bombs
//! stop at the bound at once.
//!
//! `BERTH_FUZZ_CASES=N` raises the case count (default: a CI-sized run).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use berth::checkout::{Checkout, FileError};
use berth::config::secrets::{Commands, MAX_VALUE_BYTES, Secrets, SecretsError, SecretsOptions};
use berth::config::{self, LoadError, LoadOptions, yaml};
use proptest::prelude::*;
use proptest::sample::{Index, select};

/// A load that takes longer is hung: the largest input here takes < 1 s in
/// debug.
const HUNG: Duration = Duration::from_secs(30);

/// The secret value planted in secrets files; no error may print it.
const PLANTED: &str = "SECRETVALUE123";

fn cases(default: u32) -> u32 {
    std::env::var("BERTH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        // Failures are reported with the shrunk input; no regression files
        // are written into the tree.
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases(default))
    }
}

/// Run `f` on a thread of its own and fail if it does not finish in
/// [`HUNG`]: a hang is a failure, not a stuck CI job. A panic is re-raised
/// so proptest shrinks it like any other failure.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(HUNG) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("{what}: thread ended without a result"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: did not finish in {HUNG:?}"),
    }
}

// ---------------------------------------------------------------------------
// YAML from a grammar

#[derive(Clone, Debug)]
enum Y {
    /// A scalar as written in the document (plain, quoted, ERB...).
    Scalar(String),
    /// `|` block scalar lines.
    Block(Vec<String>),
    Alias(u8),
    Seq(Deco, bool, Vec<Y>),
    Map(Deco, bool, Vec<(String, Y)>),
}

/// `&aN` and a tag in front of a node.
#[derive(Clone, Debug)]
struct Deco {
    anchor: Option<u8>,
    tag: Option<&'static str>,
}

const ANCHORS: u8 = 6;

fn deco() -> impl Strategy<Value = Deco> {
    (
        prop::option::weighted(0.3, 0..ANCHORS),
        prop::option::weighted(
            0.1,
            select(vec![
                "!!str",
                "!!map",
                "!!seq",
                "!",
                "!ruby/object:Foo",
                "!!binary",
            ]),
        ),
    )
        .prop_map(|(anchor, tag)| Deco { anchor, tag })
}

fn scalar() -> impl Strategy<Value = String> {
    // Weighted so a document of ~20 scalars usually gets past ERB and the
    // YAML syntax into decode; the refusals still come often enough.
    prop_oneof![
        40 => select(vec![
            "web", "demo", "127.0.0.1", "10.0.0.1", "amd64", "arm64", "v1", "true", "no",
            "~", "null", "", "1_000", "0x1F", "0o17", "017", "-.inf", ".nan", "1e400",
            "9223372036854775807", "9223372036854775808", "-9223372036854775808", "0b101",
            ":sym", "::", "3600", "86400000", "-1", "0", "1.5", "acme/app:latest",
            "localhost:5000", "bin/jobs --queue q", "/up", "$PWD/data:/data", "a=b",
            "<<", "*", "&", "!", "%", "@", "`", "- x", "? x", "x: y", "x #c",
        ]).prop_map(str::to_string),
        2 => select(vec![
            "<%= ENV[\"X\"] %>", "<%= ENV.fetch(\"X\") %>", "<%= ENV['X'] %>",
            "<%= ENV.fetch(\"NOPE\", \"d\") %>", "<%# c %>", "<%% lit %>",
            "<%= ENV[\"X\"] -%>", "<%= ENV[\"NOPE\"] %>",
        ]).prop_map(str::to_string),
        1 => select(vec![
            "<%= ENV.fetch(\"NOPE\") %>", "<% x %>", "<%= `id` %>", "<%= ENV[\"#{x}\"] %>",
            "<%", "<%= ENV.fetch(\"X\", ENV[\"Y\"]) %>", "<%=%>",
        ]).prop_map(str::to_string),
        16 => "[a-zA-Z0-9_./:-]{1,12}",
        1 => "[ -~]{0,16}",
        1 => "\\PC{0,8}",
        // Raw control characters, which YAML refuses outside quotes.
        1 => "[\\x00-\\x1f\\x7f\\u{85}\\u{2028}\\u{feff}a]{1,4}",
        12 => "[ -!#-\\[\\]-~]{0,12}".prop_map(|s| format!("\"{s}\"")),
        2 => select(vec![
            "\"\\x00\"", "\"\\e[2J\"", "\"\\u0007\"", "\"\\uD800\"", "\"\\U0010FFFF\"",
            "\"\\\"", "\"a\\\nb\"", "'it''s'", "'", "\"", "\"\\N\\_\\L\\P\"",
        ]).prop_map(str::to_string),
        1 => (select(vec!['a', 'é', ' ', '\\', '"']), 100usize..40_000)
            .prop_map(|(c, n)| format!("\"{}\"", c.to_string().repeat(n).replace(['\\', '"'], "x"))),
        1 => (1usize..3_000).prop_map(|n| "k".repeat(n)),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => select(vec![
            "service", "image", "servers", "hosts", "web", "job", "cmd", "env", "clear",
            "secret", "tags", "registry", "server", "username", "password", "builder",
            "arch", "ssh", "user", "port", "proxy", "proxy_command", "keys", "config",
            "host", "accessories", "files", "volumes", "labels", "options", "boot",
            "limit", "wait", "healthcheck", "interval", "path", "x-berth", "version",
            "prune", "secrets_path", "aliases", "hooks_path", "logging", "driver",
            "readiness_delay", "deploy_timeout", "drain_timeout", "retain_containers",
            "primary_role", "require_destination", "minimum_version", "asset_path",
            "ssl", "app_port", "run", "roles", "role", "directories", "x-a", "x-b",
        ]).prop_map(str::to_string),
        1 => Just("<<".to_string()),
        1 => "[a-z_-]{1,10}",
        1 => "\"[ -!#-~]{0,10}\"",
        1 => select(vec!["? complex", "[a, b]", "{a: 1}", "*a0", "&a1 k", "!!str k", "1", "true", "~"])
            .prop_map(str::to_string),
    ]
}

fn tree() -> impl Strategy<Value = Y> {
    let leaf = prop_oneof![
        8 => scalar().prop_map(Y::Scalar),
        2 => (0..ANCHORS).prop_map(Y::Alias),
        1 => prop::collection::vec("[ -~]{0,20}", 1..4).prop_map(Y::Block),
    ];
    leaf.prop_recursive(8, 96, 8, |inner| {
        prop_oneof![
            (
                deco(),
                prop::bool::weighted(0.3),
                prop::collection::vec(inner.clone(), 0..6)
            )
                .prop_map(|(d, flow, items)| Y::Seq(d, flow, items)),
            (
                deco(),
                prop::bool::weighted(0.2),
                prop::collection::vec((key(), inner), 0..8)
            )
                .prop_map(|(d, flow, entries)| Y::Map(d, flow, entries)),
        ]
    })
}

/// Anchors of the nodes rendered so far: aliases refer to one of them, so
/// most documents get past the parser (unknown and recursive aliases still
/// come from keys and from `*a0` before any anchor).
type Defined = Vec<u8>;

fn prefix(d: &Deco) -> String {
    let mut s = String::new();
    if let Some(a) = d.anchor {
        s.push_str(&format!("&a{a} "));
    }
    if let Some(t) = d.tag {
        s.push_str(t);
        s.push(' ');
    }
    s
}

/// Render in flow style (`[..]`, `{..}`): everything inside a flow
/// collection is flow.
fn flow(y: &Y, out: &mut String, defined: &mut Defined) {
    match y {
        Y::Scalar(s) => out.push_str(s),
        Y::Block(lines) => out.push_str(&format!("\"{}\"", lines.join(" ").replace('"', ""))),
        Y::Alias(n) => out.push_str(&alias(*n, defined)),
        Y::Seq(d, _, items) => {
            out.push_str(&prefix(d));
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                flow(item, out, defined);
            }
            out.push(']');
        }
        Y::Map(d, _, entries) => {
            out.push_str(&prefix(d));
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(k);
                out.push_str(": ");
                flow(v, out, defined);
            }
            out.push('}');
        }
    }
    define(y, defined);
}

/// Render `y` as the value after `key:` or `- ` at indentation `indent`.
fn alias(n: u8, defined: &Defined) -> String {
    match defined.len() {
        0 if n == 0 => "*a0".into(),
        0 => "lol".into(),
        len => format!("*a{}", defined[usize::from(n) % len]),
    }
}

/// The node is complete: its anchor may be used from now on.
fn define(y: &Y, defined: &mut Defined) {
    if let Y::Seq(
        Deco {
            anchor: Some(a), ..
        },
        ..,
    )
    | Y::Map(
        Deco {
            anchor: Some(a), ..
        },
        ..,
    ) = y
    {
        defined.push(*a);
    }
}

fn block(y: &Y, indent: usize, out: &mut String, defined: &mut Defined) {
    let pad = " ".repeat(indent);
    match y {
        Y::Seq(_, true, _) | Y::Map(_, true, _) | Y::Scalar(_) | Y::Alias(_) => {
            out.push(' ');
            flow(y, out, defined);
            out.push('\n');
        }
        Y::Block(lines) => {
            out.push_str(" |\n");
            for l in lines {
                out.push_str(&format!("{pad}  {l}\n"));
            }
        }
        Y::Seq(d, false, items) if !items.is_empty() => {
            out.push_str(&format!(" {}\n", prefix(d).trim_end()));
            for item in items {
                out.push_str(&format!("{pad}-"));
                block(item, indent + 2, out, defined);
            }
        }
        Y::Map(d, false, entries) if !entries.is_empty() => {
            out.push_str(&format!(" {}\n", prefix(d).trim_end()));
            for (k, v) in entries {
                out.push_str(&format!("{pad}{k}:"));
                block(v, indent + 2, out, defined);
            }
        }
        Y::Seq(..) | Y::Map(..) => {
            out.push(' ');
            flow(y, out, defined);
            out.push('\n');
        }
    }
    define(y, defined);
}

fn document(root: &Y) -> String {
    let mut out = String::new();
    let mut defined = Defined::new();
    match root {
        Y::Map(_, false, entries) => {
            for (k, v) in entries {
                out.push_str(k);
                out.push(':');
                block(v, 2, &mut out, &mut defined);
            }
        }
        other => {
            out.push_str("x:");
            block(other, 2, &mut out, &mut defined);
        }
    }
    out
}

/// A valid config, then generated root entries (a repeated key replaces
/// the base's), so decode sees the shapes it expects often.
const BASE: &str = "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [127.0.0.1]\n\
    registry:\n  server: localhost:5000\n  username: u\n  password: [REGISTRY_PASSWORD]\n\
    builder:\n  arch: amd64\nenv:\n  secret: [DB_PASSWORD]\nx-berth:\n  version: v1\n";

fn kamal_doc() -> impl Strategy<Value = String> {
    prop::collection::vec((key(), tree()), 1..10).prop_map(|entries| {
        let mut text = String::from(BASE);
        text.push_str(&document(&Y::Map(
            Deco {
                anchor: None,
                tag: None,
            },
            false,
            entries,
        )));
        text
    })
}

/// Nesting from 1 to 200 deep, in the styles YAML has, under a Kamal key.
fn deep_doc() -> impl Strategy<Value = (String, usize)> {
    (
        select(vec![
            "x-deep",
            "env",
            "servers",
            "labels",
            "accessories",
            "ssh",
        ]),
        0usize..4,
        1usize..200,
    )
        .prop_map(|(k, style, n)| {
            let body = match style {
                0 => format!("{}{}", "[".repeat(n), "]".repeat(n)),
                1 => format!("{}1{}", "{a: ".repeat(n), "}".repeat(n)),
                2 => format!("\n{}x\n", "- ".repeat(n)),
                _ => {
                    let mut s = String::from("\n");
                    for i in 0..n {
                        s.push_str(&format!("{}a:\n", "  ".repeat(i + 1)));
                    }
                    s
                }
            };
            (format!("service: demo\n{k}: {body}\n"), n)
        })
}

/// Byte-level damage: invalid UTF-8, CR, NUL, BOM, tabs at some offsets.
fn damage() -> impl Strategy<Value = Vec<(Index, &'static [u8])>> {
    let bad: Vec<&'static [u8]> = vec![
        b"\xff",
        b"\xc3\x28",
        b"\xed\xa0\x80",
        b"\xc0\xaf",
        b"\xe2\x82",
        b"\xf4\x90\x80\x80",
        b"\r",
        b"\r\n",
        b"\0",
        b"\xef\xbb\xbf",
        b"\t",
        b"\n",
        b"\x1b[2J",
    ];
    // Mostly none: one bad byte stops the load before YAML.
    prop::option::weighted(
        0.25,
        prop::collection::vec((any::<Index>(), select(bad)), 1..3),
    )
    .prop_map(Option::unwrap_or_default)
}

fn apply_damage(mut bytes: Vec<u8>, damage: &[(Index, &[u8])]) -> Vec<u8> {
    for (at, what) in damage {
        let at = at.index(bytes.len() + 1);
        bytes.splice(at..at, what.iter().copied());
    }
    bytes
}

// ---------------------------------------------------------------------------
// Mutations of the real corpus

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/valid");
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(files.len() > 20, "corpus not found in {}", dir.display());
    files
}

#[derive(Clone, Debug)]
enum Op {
    Flip(Index, u8),
    Set(Index, u8),
    DupLine(Index),
    DelLine(Index),
    SwapLines(Index, Index),
    Indent(Index, bool),
    Truncate(Index),
    /// Insert a range of another corpus file.
    Splice(Index, Index, Index, Index),
    Insert(Index, &'static str),
}

fn op() -> impl Strategy<Value = Op> {
    let snippets = vec![
        "&a0 ",
        "*a0",
        "<<: *a0\n",
        "!!str ",
        "{",
        "[",
        "]",
        "}",
        "\"",
        "'",
        ": ",
        "- ",
        "<%= ENV[\"X\"] %>",
        "<% x %>",
        "<%",
        "%>",
        "\n  ",
        "\t",
        "#",
        "? ",
        "|\n",
        "---\n",
        "...\n",
        "%YAML 1.1\n",
        "x-a: &a0 [1, 2]\n",
        "\u{1b}[2J",
        "\u{0}",
    ];
    prop_oneof![
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Op::Flip(i, b)),
        1 => (any::<Index>(), select(b":-[]{}&*!|>'\"#%@` \n\t0".to_vec())).prop_map(|(i, b)| Op::Set(i, b)),
        2 => any::<Index>().prop_map(Op::DupLine),
        2 => any::<Index>().prop_map(Op::DelLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Op::SwapLines(a, b)),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(a, b)| Op::Indent(a, b)),
        1 => any::<Index>().prop_map(Op::Truncate),
        2 => (any::<Index>(), any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(f, a, b, at)| Op::Splice(f, a, b, at)),
        2 => (any::<Index>(), select(snippets)).prop_map(|(i, s)| Op::Insert(i, s)),
    ]
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn mutate(bytes: &[u8], ops: &[Op], corpus: &[(PathBuf, Vec<u8>)]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for op in ops {
        match op {
            Op::Flip(i, bit) if !b.is_empty() => {
                let i = i.index(b.len());
                b[i] ^= 1u8 << *bit;
            }
            Op::Set(i, v) if !b.is_empty() => {
                let i = i.index(b.len());
                b[i] = *v;
            }
            Op::DupLine(i) | Op::DelLine(i) | Op::Indent(i, _) if !b.is_empty() => {
                let mut ls = lines(&b);
                let i = i.index(ls.len());
                match op {
                    Op::DupLine(_) => {
                        let l = ls[i].clone();
                        ls.insert(i, l);
                    }
                    Op::DelLine(_) => {
                        ls.remove(i);
                    }
                    Op::Indent(_, true) => {
                        ls[i].splice(0..0, *b"  ");
                    }
                    _ => {
                        let n = ls[i].iter().take(2).take_while(|&&c| c == b' ').count();
                        ls[i].drain(..n);
                    }
                }
                b = ls.concat();
            }
            Op::SwapLines(x, y) if !b.is_empty() => {
                let mut ls = lines(&b);
                let (x, y) = (x.index(ls.len()), y.index(ls.len()));
                ls.swap(x, y);
                b = ls.concat();
            }
            Op::Truncate(i) => b.truncate(i.index(b.len() + 1)),
            Op::Splice(f, x, y, at) => {
                let other = &corpus[f.index(corpus.len())].1;
                let (x, y) = (x.index(other.len() + 1), y.index(other.len() + 1));
                let at = at.index(b.len() + 1);
                b.splice(at..at, other[x.min(y)..x.max(y)].iter().copied());
            }
            Op::Insert(i, s) => {
                let i = i.index(b.len() + 1);
                b.splice(i..i, s.bytes());
            }
            _ => {}
        }
    }
    b
}

// ---------------------------------------------------------------------------
// Loading and the location property

fn erb_env(key: &str) -> Option<String> {
    match key {
        "X" | "BERTH_CORPUS_HOST" => Some("10.0.0.9".into()),
        "Y" => Some("y".into()),
        _ => None,
    }
}

/// Write the files into a fresh project and load them through the confined
/// checkout, as `berth validate` does.
fn load_files(
    deploy: Vec<u8>,
    dest: Option<Vec<u8>>,
    untrusted: bool,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let file = dir.path().join("config/deploy.yml");
    let dest_file = dir.path().join("config/deploy.staging.yml");
    std::fs::write(&file, &deploy).unwrap();
    if let Some(d) = &dest {
        std::fs::write(&dest_file, d).unwrap();
    }
    let has_dest = dest.is_some();
    let (f, root) = (file.clone(), dir.path().to_path_buf());
    let result = bounded("config::load", move || {
        let files = if untrusted {
            Checkout::untrusted(&root)
        } else {
            Checkout::confined(&root)
        }
        .unwrap();
        config::load(&LoadOptions {
            config_file: &f,
            destination: has_dest.then_some("staging"),
            env: &erb_env,
            files: &files,
        })
        .map(|_| ())
    });
    let err = match result {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let line_count = |path: &Path| {
        let bytes = if path == file {
            &deploy
        } else {
            dest.as_ref().unwrap_or(&deploy)
        };
        1 + bytes.iter().filter(|&&b| b == b'\n').count()
    };
    let known = |path: &Path| path == file || (has_dest && path == dest_file);
    match &err {
        LoadError::Invalid(errors) => {
            prop_assert!(!errors.is_empty(), "an invalid config with no error");
            for e in errors {
                let path: &Path = &e.mark.file;
                prop_assert!(known(path), "error in another file: {e}");
                prop_assert!(e.mark.line >= 1 && e.mark.col >= 1, "unlocated: {e}");
                prop_assert!(
                    e.mark.line <= line_count(path) + 1,
                    "line past the end ({} lines): {e}",
                    line_count(path)
                );
            }
        }
        LoadError::File(FileError::NotUtf8 { path, line }) => {
            prop_assert!(known(path), "error in another file: {err}");
            prop_assert!(*line >= 1 && *line <= line_count(path), "{err}");
        }
        LoadError::File(other) => prop_assert!(false, "unexpected file error: {other}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn grammar_yaml_loads_or_is_located(
        doc in kamal_doc(),
        dest in prop::option::weighted(0.25, kamal_doc()),
        dmg in damage(),
        untrusted in any::<bool>(),
    ) {
        let deploy = apply_damage(doc.into_bytes(), &dmg);
        load_files(deploy, dest.map(String::into_bytes), untrusted)?;
    }

    #[test]
    fn mutated_corpus_loads_or_is_located(
        pick in any::<Index>(),
        ops in prop::collection::vec(op(), 1..5),
        dest_ops in prop::option::weighted(0.3, prop::collection::vec(op(), 0..4)),
        untrusted in any::<bool>(),
    ) {
        let corpus = corpus();
        let bases: Vec<&(PathBuf, Vec<u8>)> = corpus
            .iter()
            .filter(|(p, _)| p.file_stem().is_some_and(|s| !s.to_string_lossy().contains('.')))
            .collect();
        let (path, bytes) = bases[pick.index(bases.len())];
        let deploy = mutate(bytes, &ops, &corpus);
        // The destination file beside it, if any (else an empty one).
        let dest = dest_ops.map(|dops| {
            let sibling = path.with_extension("").to_string_lossy().into_owned();
            let own = corpus.iter().find(|(p, _)| {
                p.to_string_lossy().starts_with(&format!("{sibling}.")) && p != path
            });
            mutate(own.map_or(&[][..], |(_, b)| b), &dops, &corpus)
        });
        load_files(deploy, dest, untrusted)?;
    }

    #[test]
    fn deep_nesting_is_refused_past_the_bound((doc, n) in deep_doc()) {
        let text = doc.clone();
        let result = bounded("yaml::parse", move || {
            yaml::parse(&text, Path::new("deploy.yml")).map(|_| ())
        });
        // The root mapping is one level more.
        if n + 1 > yaml::MAX_DEPTH {
            prop_assert!(result.is_err(), "{n} deep was accepted");
        } else {
            prop_assert!(result.is_ok(), "{n} deep refused: {:?}", result.err());
        }
        load_files(doc.into_bytes(), None, true)?;
    }
}

// ---------------------------------------------------------------------------
// Expansion bombs

/// The line where an alias bomb `w` wide and `d` deep crosses MAX_NODES, by
/// the parser's own accounting: every node once where it is built, again at
/// each alias, and once more for the copy an anchored collection keeps.
fn bomb_crossing(w: u128, d: usize, merge: bool) -> Option<usize> {
    let max = yaml::MAX_NODES as u128;
    let mut cum: u128 = 1; // the root mapping
    let mut level: u128 = 2; // `[lol]`
    for i in 0..=d {
        if i > 0 {
            // `[*a, …]`, or `{k0: *a, …}` with its keys.
            level = 1 + w * (level + u128::from(merge));
        }
        cum = cum.saturating_add(1 + 2 * level);
        if cum > max {
            return Some(i + 1);
        }
    }
    // `x-use: {<<: *aD}`: key, mapping, `<<`, the alias.
    (merge && cum + 3 + level > max).then_some(d + 2)
}

proptest! {
    #![proptest_config(config(48))]

    /// Past the bound the parse fails with the bound's message at the line
    /// that crossed it: it stopped there instead of expanding the rest.
    #[test]
    fn alias_bombs_stop_at_the_bound(w in 2usize..12, d in 1usize..12, merge in any::<bool>()) {
        let mut doc = String::from("x-a0: &a0 [lol]\n");
        for i in 1..=d {
            let p = i - 1;
            if merge {
                let entries: Vec<String> = (0..w).map(|j| format!("k{j}: *a{p}")).collect();
                doc.push_str(&format!("x-a{i}: &a{i} {{{}}}\n", entries.join(", ")));
            } else {
                doc.push_str(&format!("x-a{i}: &a{i} [{}]\n", vec![format!("*a{p}"); w].join(", ")));
            }
        }
        if merge {
            doc.push_str(&format!("x-use: {{<<: *a{d}}}\n"));
        }
        let result = bounded("alias bomb", move || {
            yaml::parse(&doc, Path::new("deploy.yml")).map(|_| ())
        });
        match (bomb_crossing(w as u128, d, merge), result) {
            (Some(line), Err(e)) => {
                prop_assert!(e.message.contains("expands to more than"), "{e}");
                prop_assert_eq!(e.mark.line, line, "{}", e);
            }
            (None, Ok(())) => {}
            (expected, got) => prop_assert!(false, "{w}×{d}: crossing at {expected:?}, got {got:?}"),
        }
    }

    /// A long scalar aliased `n` times, in a small file: refused at the alias
    /// whose copy passes MAX_SCALAR_BYTES.
    #[test]
    fn scalar_bombs_stop_at_the_bound(len in 1_000usize..200_000, n in 1usize..400) {
        let doc = format!(
            "x-s: &s \"{}\"\nx-u: [{}]\n",
            "b".repeat(len),
            vec!["*s"; n].join(", ")
        );
        let result = bounded("scalar bomb", move || {
            yaml::parse(&doc, Path::new("deploy.yml")).map(|_| ())
        });
        // The keys `x-s`, `x-u` (3 bytes each), the scalar, then each alias.
        let crossing = (0..n).find(|j| 6 + len * (j + 2) > yaml::MAX_SCALAR_BYTES);
        match (crossing, result) {
            (Some(j), Err(e)) => {
                prop_assert!(e.message.contains("bytes of values"), "{e}");
                // `x-u: [` is 6 columns, then `*s, ` is 4 for each alias.
                prop_assert_eq!((e.mark.line, e.mark.col), (2, 7 + 4 * j), "{}", e);
            }
            (None, Ok(())) => {}
            (expected, got) => prop_assert!(false, "{len}×{n}: crossing at {expected:?}, got {got:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Secrets

/// One piece of a value; `{M}` is the marker file a command would create.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(PLANTED.to_string()),
        3 => "[a-zA-Z0-9_./+=-]{0,10}",
        2 => select(vec![
            "$A", "${A}", "$B", "${NOPE}", "$", "${", "$}", "\\$A", "$$", "${A", "$A$A",
            "$(touch {M})", "\\$(touch {M})", "$(touch {M}", "$((touch {M}))", "$( )",
            "\\", "\\\\", "\\n", "\\\"", "\\'", "#", " #c", "'", "\"", " ", "\t", "=", ":",
            "`touch {M}`", "é", "\u{1b}[2J", "\u{0}", "\r", "\n", "\r\n", "export ",
        ]).prop_map(str::to_string),
        1 => (select(vec!["x", "$A", "${A}${A}"]), 1usize..20_000).prop_map(|(s, n)| s.repeat(n)),
    ]
}

fn dotenv_line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        6 => "[A-Z_][A-Z0-9_]{0,8}",
        2 => select(vec!["A", "B"]).prop_map(str::to_string),
        1 => select(vec!["a.b", "1A", "-X", "A-B", "", "É", "A B"]).prop_map(str::to_string),
    ];
    let value = prop::collection::vec(piece(), 0..5).prop_map(|p| p.concat());
    prop_oneof![
        8 => (
            prop::bool::weighted(0.2),
            key.clone(),
            select(vec!["=", " = ", ": ", ":", "=  "]),
            select(vec!["", "'", "\"", "\"", "'"]),
            value,
            select(vec!["", " # c", " x", "#c"]),
        )
            .prop_map(|(export, k, sep, q, v, tail)| {
                format!("{}{k}{sep}{q}{v}{q}{tail}", if export { "export " } else { "" })
            }),
        1 => key.clone().prop_map(|k| format!("export {k}")),
        1 => Just("# comment".to_string()),
        1 => Just(String::new()),
        1 => "[ -~]{0,20}",
    ]
}

fn dotenv() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(dotenv_line(), 0..12),
        select(vec!["\n", "\r\n", "\r"]),
        damage(),
    )
        .prop_map(|(lines, eol, dmg)| apply_damage(lines.join(eol).into_bytes(), &dmg))
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Refuse,
    Skip,
    /// `Commands::Run` on an untrusted checkout: must refuse all the same.
    RunUntrusted,
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn secrets_never_quote_values_nor_run_commands(
        common in prop::option::weighted(0.3, dotenv()),
        text in dotenv(),
        mode in prop_oneof![Just(Mode::Refuse), Just(Mode::Skip), Just(Mode::RunUntrusted)],
        dest in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let kamal = dir.path().join(".kamal");
        std::fs::create_dir(&kamal).unwrap();
        let marker = dir.path().join("ran");
        let m = marker.display().to_string();
        let fill = |b: Vec<u8>| {
            String::from_utf8_lossy(&b).replace("{M}", &m).into_bytes()
        };
        let file = kamal.join(if dest { "secrets.staging" } else { "secrets" });
        std::fs::write(&file, fill(text)).unwrap();
        if let Some(c) = common {
            std::fs::write(kamal.join("secrets-common"), fill(c)).unwrap();
        }
        let root = dir.path().to_path_buf();
        let result = bounded("Secrets::load", move || {
            let files = match mode {
                Mode::RunUntrusted => Checkout::untrusted(&root),
                _ => Checkout::confined(&root),
            }
            .unwrap();
            let commands = match mode {
                Mode::Refuse => Commands::Refuse,
                Mode::Skip => Commands::Skip,
                Mode::RunUntrusted => Commands::Run,
            };
            let env = |k: &str| (k == "B").then(|| "from-env".to_string());
            Secrets::load(
                &root.join(".kamal/secrets"),
                &SecretsOptions {
                    destination: dest.then_some("staging"),
                    commands,
                    env: &env,
                    files: &files,
                    age_keys: None,
                },
            )
            .map(|s| s.keys().filter_map(|k| s.get(k)).map(|v| v.expose().len()).sum::<usize>())
        });
        prop_assert!(!marker.exists(), "a command ran ({mode:?})");
        // Memory: all values together stay within the bound, per file.
        if let Ok(total) = result {
            prop_assert!(total <= 2 * MAX_VALUE_BYTES, "{total} bytes of values");
        }
        if let Err(e) = result {
            let shown = format!("{e} {e:?}");
            prop_assert!(!shown.contains(PLANTED), "quoted a value: {shown}");
            match &e {
                SecretsError::Syntax { line, .. }
                | SecretsError::CommandNotAllowed { line, .. }
                | SecretsError::Command { line, .. } => prop_assert!(*line >= 1, "{e}"),
                SecretsError::File(FileError::NotUtf8 { line, .. }) => prop_assert!(*line >= 1),
                SecretsError::File(other) => prop_assert!(false, "unexpected: {other}"),
                // Only `load_app` refuses unset variables; `Secrets::load` records them.
                SecretsError::Unset(_) => prop_assert!(false, "unexpected: {e}"),
                // No generated file carries SOPS metadata.
                SecretsError::Sops { .. } => prop_assert!(false, "unexpected: {e}"),
            }
            if matches!(mode, Mode::Skip) {
                prop_assert!(!matches!(e, SecretsError::CommandNotAllowed { .. }), "{e}");
            }
        }
    }

    /// Plain pairs read back exactly: the parser is not just refusing.
    #[test]
    fn plain_pairs_read_back(
        pairs in prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,8}", "[a-zA-Z0-9_./+=:@-]{0,20}", 0..10),
        quote in select(vec!["", "'", "\""]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".kamal")).unwrap();
        let text: String = pairs.iter().map(|(k, v)| format!("{k}={quote}{v}{quote}\n")).collect();
        std::fs::write(dir.path().join(".kamal/secrets"), text).unwrap();
        let files = Checkout::confined(dir.path()).unwrap();
        let env = |_: &str| None;
        let s = Secrets::load(
            &dir.path().join(".kamal/secrets"),
            &SecretsOptions { destination: None, commands: Commands::Refuse, env: &env, files: &files, age_keys: None },
        );
        let s = match s {
            Ok(s) => s,
            Err(e) => return Err(TestCaseError::fail(format!("refused: {e}"))),
        };
        for (k, v) in &pairs {
            prop_assert_eq!(s.get(k).map(|s| s.expose()), Some(v.as_str()));
        }
        prop_assert_eq!(s.keys().count(), pairs.len());
    }
}
