//! A YAML document as a tree of nodes that remember where they came from.
//!
//! Kamal loads YAML with Ruby's Psych (YAML 1.1 scalars, anchors, aliases and
//! `<<` merge keys) and then deep-merges a destination file on top. Typed serde
//! crates lose the source position on merge and reject `<<` with
//! `deny_unknown_fields`, so berth builds this small positioned tree from the
//! `saphyr-parser` event stream, merges trees itself (see [`deep_merge`]) and
//! decodes the result by hand in `config::decode`, which lets every error name
//! file, line, column and key path.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Where a node starts: file, 1-based line and 1-based column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub file: Arc<Path>,
    pub line: usize,
    pub col: usize,
}

impl std::fmt::Display for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// A scalar resolved the way Psych (YAML 1.1 core) resolves it, keeping the
/// source text so that values can be printed exactly as Ruby's `to_s` would.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// `:name` plain scalars, which Psych's unsafe_load turns into Ruby symbols.
    Symbol(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key: always a string (Kamal stringifies keys), with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub mark: Mark,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub mark: Mark,
}

/// A YAML syntax problem, with its position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{mark}: {message}")]
pub struct YamlError {
    pub mark: Mark,
    pub message: String,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Scalar(Scalar::Null))
    }

    /// The mapping entry for `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The node as a name or a setting written as text: a string, or an
    /// integer or symbol as Ruby prints it; `None` for anything else.
    pub fn as_text(&self) -> Option<String> {
        match &self.value {
            Value::Scalar(Scalar::Str(s)) => Some(s.clone()),
            Value::Scalar(s @ (Scalar::Int(_) | Scalar::Symbol(_))) => Some(s.to_ruby_string()),
            _ => None,
        }
    }

    /// A name for the node's type, in Kamal's words ("a string", "an array"...).
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Scalar(Scalar::Null) => "nil",
            Value::Scalar(Scalar::Bool(_)) => "a boolean",
            Value::Scalar(Scalar::Int(_)) => "an integer",
            Value::Scalar(Scalar::Float(_)) => "a float",
            Value::Scalar(Scalar::Str(_)) => "a string",
            Value::Scalar(Scalar::Symbol(_)) => "a symbol",
            Value::Seq(_) => "an array",
            Value::Map(_) => "a hash",
        }
    }
}

impl Scalar {
    /// The value as Ruby's `to_s` prints it: what Kamal puts on a command line.
    pub fn to_ruby_string(&self) -> String {
        match self {
            Scalar::Null => String::new(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => ruby_float(*f),
            Scalar::Str(s) | Scalar::Symbol(s) => s.clone(),
        }
    }
}

/// Ruby prints floats with at least one decimal and switches to exponent
/// notation outside 1e-4..1e16.
fn ruby_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = if mantissa.contains('.') {
            mantissa.to_string()
        } else {
            format!("{mantissa}.0")
        };
        let exp: i32 = exp.parse().unwrap_or(0);
        return format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        );
    }
    let s = format!("{f}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// The most nodes a document may expand to, aliases counted at every use.
/// A real Kamal config has a few hundred; a 1.4 KB alias bomb has billions.
pub const MAX_NODES: usize = 100_000;
/// The most scalar text a document may expand to, aliases counted at every use.
pub const MAX_SCALAR_BYTES: usize = 4 << 20;
/// The deepest nesting of sequences and mappings (the tree is walked
/// recursively, so depth is also stack).
pub const MAX_DEPTH: usize = 64;

/// Parse one YAML document. An empty document is a null node.
///
/// Hardened like the loaders that faced alias bombs (go-yaml, SnakeYAML):
/// the expansion is bounded by [`MAX_NODES`] and [`MAX_SCALAR_BYTES`], counted
/// as the tree grows (the copies anchors keep included), so memory stays
/// proportional to those bounds whatever the document; nesting is bounded by
/// [`MAX_DEPTH`].
pub fn parse(text: &str, file: &Path) -> Result<Node, YamlError> {
    let file: Arc<Path> = Arc::from(file);
    let mut builder = Builder {
        file: file.clone(),
        anchors: HashMap::new(),
        stack: Vec::new(),
        root: None,
        documents: 0,
        nodes: 0,
        bytes: 0,
        copies: Size { nodes: 0, bytes: 0 },
    };
    let mut parser = Parser::new_from_str(text);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| YamlError {
            mark: Mark {
                file: file.clone(),
                line: e.marker().line(),
                col: e.marker().col() + 1,
            },
            message: format!("invalid YAML: {}", e.info()),
        })?;
        builder.event(event, span)?;
    }
    Ok(builder.root.unwrap_or(Node {
        value: Value::Scalar(Scalar::Null),
        mark: Mark {
            file,
            line: 1,
            col: 1,
        },
    }))
}

enum Frame {
    Seq {
        anchor: usize,
        mark: Mark,
        items: Vec<Node>,
        /// The expansion counters when the collection began.
        start: Size,
    },
    Map {
        anchor: usize,
        mark: Mark,
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
        start: Size,
    },
}

/// What a subtree costs once expanded: nodes and scalar bytes.
#[derive(Clone, Copy)]
struct Size {
    nodes: usize,
    bytes: usize,
}

struct Builder {
    file: Arc<Path>,
    /// Anchored nodes with their expanded size, charged again at each alias.
    anchors: HashMap<usize, (Node, Size)>,
    stack: Vec<Frame>,
    root: Option<Node>,
    documents: usize,
    /// Nodes and scalar bytes materialised so far, aliases included.
    nodes: usize,
    bytes: usize,
    /// The copies kept in `anchors` of anchored collections. Counted apart
    /// so an alias is charged only the tree it copies; counted against the
    /// same bounds because a collection is copied once per anchored
    /// ancestor, so nesting would otherwise multiply memory by MAX_DEPTH.
    copies: Size,
}

impl Builder {
    fn mark(&self, span: &Span) -> Mark {
        Mark {
            file: self.file.clone(),
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }

    fn error(&self, mark: Mark, message: impl Into<String>) -> YamlError {
        YamlError {
            mark,
            message: message.into(),
        }
    }

    fn size(&self) -> Size {
        Size {
            nodes: self.nodes,
            bytes: self.bytes,
        }
    }

    fn since(&self, start: Size) -> Size {
        Size {
            nodes: self.nodes - start.nodes,
            bytes: self.bytes - start.bytes,
        }
    }

    /// Charge `size` to the document; past a bound the parse stops.
    fn charge(&mut self, size: Size, span: &Span) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(size.nodes);
        self.bytes = self.bytes.saturating_add(size.bytes);
        self.check(span)
    }

    /// Charge the copy an anchored collection keeps for its aliases.
    fn charge_copy(&mut self, size: Size, span: &Span) -> Result<(), YamlError> {
        self.copies.nodes = self.copies.nodes.saturating_add(size.nodes);
        self.copies.bytes = self.copies.bytes.saturating_add(size.bytes);
        self.check(span)
    }

    fn check(&self, span: &Span) -> Result<(), YamlError> {
        if self.nodes.saturating_add(self.copies.nodes) > MAX_NODES {
            return Err(self.error(
                self.mark(span),
                format!(
                    "the document expands to more than {MAX_NODES} nodes (aliases counted at each use); berth refuses it"
                ),
            ));
        }
        if self.bytes.saturating_add(self.copies.bytes) > MAX_SCALAR_BYTES {
            return Err(self.error(
                self.mark(span),
                format!(
                    "the document expands to more than {MAX_SCALAR_BYTES} bytes of values (aliases counted at each use); berth refuses it"
                ),
            ));
        }
        Ok(())
    }

    fn open(&mut self, span: &Span) -> Result<Size, YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(
                self.mark(span),
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.charge(Size { nodes: 1, bytes: 0 }, span)?;
        Ok(self.size())
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), YamlError> {
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(self.error(
                        self.mark(&span),
                        "a config file must hold one YAML document, found a second one",
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let mark = self.mark(&span);
                let size = Size {
                    nodes: 1,
                    bytes: text.len(),
                };
                self.charge(size, &span)?;
                let scalar = match tag {
                    Some(tag) if tag.handle == "!!" && tag.suffix == "str" => {
                        Scalar::Str(text.into_owned())
                    }
                    Some(tag) if !(tag.handle == "!!" || tag.handle == "!") => {
                        return Err(self.error(
                            mark,
                            format!("unsupported YAML tag {}{}", tag.handle, tag.suffix),
                        ));
                    }
                    _ => resolve_scalar(&text, style),
                };
                let node = Node {
                    value: Value::Scalar(scalar),
                    mark,
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, (node.clone(), size));
                }
                self.push(node)?;
            }
            Event::Alias(id) => {
                let mark = self.mark(&span);
                let Some(&(_, size)) = self.anchors.get(&id) else {
                    return Err(self.error(mark, "alias refers to an unknown anchor"));
                };
                // Charged before the copy is made, so a bomb never allocates.
                self.charge(size, &span)?;
                let node = self.anchors.get(&id).map(|(n, _)| n.clone());
                if let Some(node) = node {
                    self.push(node)?;
                }
            }
            Event::SequenceStart(anchor, _) => {
                let mark = self.mark(&span);
                let start = self.open(&span)?;
                self.stack.push(Frame::Seq {
                    anchor,
                    mark,
                    items: Vec::new(),
                    start,
                });
            }
            Event::MappingStart(anchor, _) => {
                let mark = self.mark(&span);
                let start = self.open(&span)?;
                self.stack.push(Frame::Map {
                    anchor,
                    mark,
                    entries: Vec::new(),
                    pending_key: None,
                    start,
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq {
                    anchor,
                    mark,
                    items,
                    start,
                }) = self.stack.pop()
                {
                    let node = Node {
                        value: Value::Seq(items),
                        mark,
                    };
                    if anchor > 0 {
                        // The collection's own node was charged before `start`.
                        let mut size = self.since(start);
                        size.nodes += 1;
                        self.charge_copy(size, &span)?;
                        self.anchors.insert(anchor, (node.clone(), size));
                    }
                    self.push(node)?;
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    anchor,
                    mark,
                    entries,
                    start,
                    ..
                }) = self.stack.pop()
                {
                    let node = Node {
                        value: Value::Map(build_map(entries)?),
                        mark,
                    };
                    if anchor > 0 {
                        let mut size = self.since(start);
                        size.nodes += 1;
                        self.charge_copy(size, &span)?;
                        self.anchors.insert(anchor, (node.clone(), size));
                    }
                    self.push(node)?;
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn push(&mut self, node: Node) -> Result<(), YamlError> {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
        Ok(())
    }
}

/// Turn raw (key node, value node) pairs into a mapping: keys become strings,
/// `<<` merge keys are expanded (explicit keys win over merged ones, as the
/// YAML merge-key spec says), and a duplicated key keeps the last value as
/// Psych does.
fn build_map(raw: Vec<(Node, Node)>) -> Result<Vec<(Key, Node)>, YamlError> {
    let mut explicit: Vec<(Key, Node)> = Vec::new();
    let mut merged: Vec<(Key, Node)> = Vec::new();
    // Positions by name: a linear search per key made a 45 000-entry
    // mapping (700 KB, under MAX_NODES) cost 3.5 s.
    let mut explicit_at: HashMap<String, usize> = HashMap::new();
    let mut merged_names: HashSet<String> = HashSet::new();
    for (key, value) in raw {
        let name = match &key.value {
            Value::Scalar(s) => s.to_ruby_string(),
            _ => {
                return Err(YamlError {
                    mark: key.mark,
                    message: "mapping keys must be scalars".into(),
                });
            }
        };
        let is_merge = name == "<<" && matches!(key.value, Value::Scalar(Scalar::Str(_)));
        if is_merge {
            let sources = match value.value {
                Value::Map(entries) => vec![entries],
                Value::Seq(items) => {
                    let mut maps = Vec::new();
                    for item in items {
                        match item.value {
                            Value::Map(entries) => maps.push(entries),
                            _ => {
                                return Err(YamlError {
                                    mark: item.mark,
                                    message: "`<<` merges only mappings".into(),
                                });
                            }
                        }
                    }
                    maps
                }
                _ => {
                    return Err(YamlError {
                        mark: value.mark,
                        message: "`<<` merges only a mapping or a list of mappings".into(),
                    });
                }
            };
            // Earlier sources in a merge list take precedence over later ones.
            for entries in sources {
                for (k, v) in entries {
                    if merged_names.insert(k.name.clone()) {
                        merged.push((k, v));
                    }
                }
            }
            continue;
        }
        let key = Key {
            name,
            mark: key.mark,
        };
        if let Some(&at) = explicit_at.get(&key.name) {
            explicit[at] = (key, value);
        } else {
            explicit_at.insert(key.name.clone(), explicit.len());
            explicit.push((key, value));
        }
    }
    for (k, v) in merged {
        if !explicit_at.contains_key(&k.name) {
            explicit.push((k, v));
        }
    }
    Ok(explicit)
}

/// YAML 1.1 scalar resolution as Psych's ScalarScanner does it, for the
/// forms that matter in configs.
fn resolve_scalar(text: &str, style: ScalarStyle) -> Scalar {
    if style != ScalarStyle::Plain {
        return Scalar::Str(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        _ => {}
    }
    let lower = text.to_ascii_lowercase();
    match lower.as_str() {
        "true" | "yes" | "on" => return Scalar::Bool(true),
        "false" | "no" | "off" => return Scalar::Bool(false),
        _ => {}
    }
    if let Some(int) = parse_int(text) {
        return Scalar::Int(int);
    }
    if let Some(float) = parse_float(text) {
        return Scalar::Float(float);
    }
    if let Some(sym) = text.strip_prefix(':')
        && !sym.is_empty()
        && !sym.starts_with(':')
    {
        return Scalar::Symbol(sym.trim_matches('"').to_string());
    }
    Scalar::Str(text.to_string())
}

fn parse_int(text: &str) -> Option<i64> {
    let (neg, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if body.is_empty() || body.starts_with('_') || body.ends_with('_') {
        return None;
    }
    let digits: String = body.chars().filter(|c| *c != '_').collect();
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(bin) = digits.strip_prefix("0b") {
        i64::from_str_radix(bin, 2).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(digits.trim_start_matches("0o").trim_start_matches('0'), 8)
            .ok()
            .or(if digits.chars().all(|c| c == '0') {
                Some(0)
            } else {
                None
            })?
    } else if digits.chars().all(|c| c.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -value } else { value })
}

fn parse_float(text: &str) -> Option<f64> {
    let t = text.replace('_', "");
    match t.to_ascii_lowercase().as_str() {
        ".inf" | "+.inf" => return Some(f64::INFINITY),
        "-.inf" => return Some(f64::NEG_INFINITY),
        ".nan" => return Some(f64::NAN),
        _ => {}
    }
    // Psych needs a digit and either a dot or an exponent.
    let valid = t.chars().any(|c| c.is_ascii_digit())
        && t.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && (t.contains('.') || t.to_ascii_lowercase().contains('e'));
    if valid { t.parse().ok() } else { None }
}

/// ActiveSupport's `Hash#deep_merge`: mappings merge key by key, recursively;
/// anything else in `over` replaces what `base` had.
pub fn deep_merge(base: Node, over: Node) -> Node {
    match (base.value, over.value) {
        (Value::Map(mut base_entries), Value::Map(over_entries)) => {
            for (key, value) in over_entries {
                if let Some(pos) = base_entries.iter().position(|(k, _)| k.name == key.name) {
                    let (_, old) = base_entries.remove(pos);
                    base_entries.insert(pos, (key, deep_merge(old, value)));
                } else {
                    base_entries.push((key, value));
                }
            }
            Node {
                value: Value::Map(base_entries),
                mark: base.mark,
            }
        }
        (_, value) => Node {
            value,
            mark: over.mark,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Node {
        parse(text, Path::new("t.yml")).unwrap()
    }

    #[test]
    fn scalars_resolve_like_psych() {
        let n =
            p("a: 1\nb: yes\nc: '1'\nd: 40_000_000\ne: 0.5\nf: ~\ng: :verbose\nh: 1.2.3\ni: 08\n");
        let get = |k| n.get(k).unwrap().value.clone();
        assert_eq!(get("a"), Value::Scalar(Scalar::Int(1)));
        assert_eq!(get("b"), Value::Scalar(Scalar::Bool(true)));
        assert_eq!(get("c"), Value::Scalar(Scalar::Str("1".into())));
        assert_eq!(get("d"), Value::Scalar(Scalar::Int(40_000_000)));
        assert_eq!(get("e"), Value::Scalar(Scalar::Float(0.5)));
        assert_eq!(get("f"), Value::Scalar(Scalar::Null));
        assert_eq!(get("g"), Value::Scalar(Scalar::Symbol("verbose".into())));
        assert_eq!(get("h"), Value::Scalar(Scalar::Str("1.2.3".into())));
        assert_eq!(get("i"), Value::Scalar(Scalar::Str("08".into())));
    }

    #[test]
    fn ruby_to_s_of_floats() {
        assert_eq!(ruby_float(0.5), "0.5");
        assert_eq!(ruby_float(2.0), "2.0");
        assert_eq!(ruby_float(1e20), "1.0e+20");
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let n =
            p("base: &b\n  x: 1\n  y: 2\nother:\n  <<: *b\n  y: 3\nlist: &l [1, 2]\ncopy: *l\n");
        let other = n.get("other").unwrap();
        assert_eq!(other.get("x").unwrap().value, Value::Scalar(Scalar::Int(1)));
        assert_eq!(other.get("y").unwrap().value, Value::Scalar(Scalar::Int(3)));
        assert!(matches!(n.get("copy").unwrap().value, Value::Seq(ref v) if v.len() == 2));
    }

    #[test]
    fn merge_list_prefers_earlier_sources() {
        let n = p("a: &a {k: 1}\nb: &b {k: 2, j: 2}\nc:\n  <<: [*a, *b]\n");
        let c = n.get("c").unwrap();
        assert_eq!(c.get("k").unwrap().value, Value::Scalar(Scalar::Int(1)));
        assert_eq!(c.get("j").unwrap().value, Value::Scalar(Scalar::Int(2)));
    }

    #[test]
    fn positions_are_one_based() {
        let n = p("service: demo\nservers:\n  - 1.2.3.4\n");
        let s = n.get("servers").unwrap();
        let Value::Seq(items) = &s.value else {
            panic!()
        };
        assert_eq!((items[0].mark.line, items[0].mark.col), (3, 5));
    }

    /// The "billion laughs" of YAML: 9 levels of 9 aliases each.
    fn alias_bomb(levels: usize) -> String {
        let mut s = String::from("x-a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..=levels {
            let p = i - 1;
            let refs = vec![format!("*a{p}"); 9].join(", ");
            s.push_str(&format!("x-a{i}: &a{i} [{refs}]\n"));
        }
        s
    }

    #[test]
    fn an_alias_bomb_is_refused_before_it_expands() {
        let started = std::time::Instant::now();
        let e = parse(&alias_bomb(9), Path::new("t.yml")).unwrap_err();
        assert!(e.message.contains("expands to more than"), "{e}");
        // Refused where the bound was crossed, named by its line (line 5:
        // its anchored copy, counted too, crosses it).
        assert_eq!(e.mark.line, 5, "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // A few levels are an ordinary document.
        let n = p(&alias_bomb(3));
        assert!(matches!(n.get("x-a3").unwrap().value, Value::Seq(ref v) if v.len() == 9));
    }

    #[test]
    fn aliased_long_scalars_count_their_bytes() {
        let big = "v".repeat(100_000);
        let mut s = format!("a: &a {big}\nb: [");
        s.push_str(&vec!["*a"; 100].join(", "));
        s.push_str("]\n");
        let e = parse(&s, Path::new("t.yml")).unwrap_err();
        assert!(e.message.contains("bytes of values"), "{e}");
    }

    #[test]
    fn anchored_copies_count_against_the_bounds() {
        // 60 nested anchored collections each keep a copy of all below them:
        // 3.6 MB of aliased text made 110 MB of copies nothing counted.
        let nest = |anchors: bool| {
            let mut s = format!("s: &s \"{}\"\nn: ", "y".repeat(30_000));
            for i in 0..60 {
                if anchors {
                    s.push_str(&format!("&n{i} "));
                }
                s.push_str("[*s, *s, ");
            }
            format!("{s}z{}\n", "]".repeat(60))
        };
        let e = parse(&nest(true), Path::new("t.yml")).unwrap_err();
        assert!(e.message.contains("bytes of values"), "{e}");
        assert!(parse(&nest(false), Path::new("t.yml")).is_ok());
    }

    #[test]
    fn a_large_mapping_keeps_its_order_and_a_repeated_key_takes_the_last_value() {
        // 45 000 entries, under MAX_NODES (9 s in a debug build when each
        // key was searched for linearly, ~0.2 s now: a figure for the
        // benches, not a timed test).
        let mut s = String::new();
        for i in 0..45_000 {
            s.push_str(&format!("k{i}: {i}\n"));
        }
        s.push_str("k7: last\n");
        let n = p(&s);
        let Value::Map(entries) = &n.value else {
            panic!("{n:?}")
        };
        assert_eq!(entries.len(), 45_000);
        // A repeated key keeps its place and takes the last value.
        assert_eq!(entries[7].0.name, "k7");
        assert_eq!(
            entries[7].1.value,
            Value::Scalar(Scalar::Str("last".into()))
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let e = parse(&deep, Path::new("t.yml")).unwrap_err();
        assert!(e.message.contains("nested deeper"), "{e}");
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok, Path::new("t.yml")).is_ok());
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("a: [1, 2\n", Path::new("t.yml")).unwrap_err();
        assert_eq!(e.mark.line, 2);
        assert!(e.message.contains("invalid YAML"));
    }

    #[test]
    fn deep_merge_replaces_arrays_and_merges_maps() {
        let base = p("a: {x: 1, y: [1]}\nb: 1\n");
        let over = p("a: {y: [2], z: 3}\n");
        let m = deep_merge(base, over);
        let a = m.get("a").unwrap();
        assert_eq!(a.get("x").unwrap().value, Value::Scalar(Scalar::Int(1)));
        assert!(
            matches!(&a.get("y").unwrap().value, Value::Seq(v) if v[0].value == Value::Scalar(Scalar::Int(2)))
        );
        assert_eq!(a.get("z").unwrap().value, Value::Scalar(Scalar::Int(3)));
    }
}
