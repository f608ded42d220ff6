//! A span-carrying YAML tree.
//!
//! The inventory is first parsed into this small, untyped tree in which every
//! node (keys included) remembers its line and column. Validation then walks
//! the tree, so each problem can point at the exact key or value at fault and
//! all problems can be collected instead of stopping at the first one.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, MessageFormatter, Spanned, UserMessageFormatter};

/// A 1-based line/column position in the inventory file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Loc {
    pub line: u64,
    pub col: u64,
}

impl Loc {
    /// Start of the file: used for problems that have no better anchor.
    pub const START: Loc = Loc { line: 1, col: 1 };
}

/// What a scalar looked like to the YAML resolver (plain `22` is an integer,
/// `"22"` a string, `yes` a boolean, `~` or nothing at all a null).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ScalarKind {
    Null,
    Bool(bool),
    Int(i128),
    Float,
    Str,
}

/// One node of the tree.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub loc: Loc,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// `text` is the string value for strings and the source spelling for
    /// everything else, so `1.10` stays "1.10" and `no` stays "no".
    Scalar {
        text: String,
        kind: ScalarKind,
    },
    Seq(Vec<Node>),
    /// Entries in file order; duplicate keys are kept so that the validator can
    /// report them alongside every other problem.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// Short description of the node's type, for "expected X, got Y" messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Scalar { kind, .. } => match kind {
                ScalarKind::Null => "nothing",
                ScalarKind::Bool(_) => "a boolean",
                ScalarKind::Int(_) => "a number",
                ScalarKind::Float => "a number",
                ScalarKind::Str => "a string",
            },
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(
            self.value,
            Value::Scalar {
                kind: ScalarKind::Null,
                ..
            }
        )
    }
}

/// Parses `text` into a tree, or returns the position and message of the YAML
/// syntax error.
pub(crate) fn parse(text: &str) -> Result<Node, (Loc, String)> {
    // Duplicate keys are passed through so they are reported with the other
    // problems rather than aborting the parse.
    let options = serde_saphyr::options! { duplicate_keys: DuplicateKeyPolicy::PassThrough };
    match serde_saphyr::from_str_with_options::<Spanned<RawNode>>(text, options) {
        Ok(root) => Ok(convert(root, text)),
        Err(err) => {
            let loc = err
                .location()
                .filter(|l| l.line() > 0)
                .map(|l| Loc {
                    line: l.line(),
                    col: l.column().max(1),
                })
                .unwrap_or(Loc::START);
            let message = UserMessageFormatter.format_message(err.without_snippet());
            // Keep every problem on one line.
            let message: String = message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Err((loc, message))
        }
    }
}

/// The shape serde-saphyr hands us: every child wrapped in `Spanned`.
enum RawNode {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<RawNode>>),
    Map(Vec<(Spanned<RawNode>, Spanned<RawNode>)>),
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawNode;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }

    fn visit_none<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawNode, D::Error> {
        RawNode::deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<RawNode, E> {
        Ok(RawNode::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<RawNode, E> {
        Ok(RawNode::Int(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<RawNode, E> {
        Ok(RawNode::Int(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<RawNode, E> {
        Ok(RawNode::Int(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<RawNode, E> {
        Ok(RawNode::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<RawNode, E> {
        Ok(RawNode::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<RawNode, E> {
        Ok(RawNode::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(RawNode::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(RawNode::Map(entries))
    }
}

/// Turns the serde-saphyr shape into [`Node`]s, recovering the source spelling
/// of non-string scalars from the byte span of their definition.
fn convert(node: Spanned<RawNode>, text: &str) -> Node {
    let loc = Loc {
        line: node.referenced.line(),
        col: node.referenced.column(),
    };
    let span = node.defined.span();
    let source = || -> Option<String> {
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        text.get(start..start.checked_add(len)?).map(str::to_owned)
    };
    let scalar = |kind: ScalarKind, fallback: String| Value::Scalar {
        text: source().unwrap_or(fallback),
        kind,
    };
    let value = match node.value {
        RawNode::Null => scalar(ScalarKind::Null, String::new()),
        RawNode::Bool(b) => scalar(ScalarKind::Bool(b), b.to_string()),
        RawNode::Int(i) => scalar(ScalarKind::Int(i), i.to_string()),
        RawNode::Float(f) => scalar(ScalarKind::Float, f.to_string()),
        RawNode::Str(s) => Value::Scalar {
            text: s,
            kind: ScalarKind::Str,
        },
        RawNode::Seq(items) => Value::Seq(items.into_iter().map(|n| convert(n, text)).collect()),
        RawNode::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (convert(k, text), convert(v, text)))
                .collect(),
        ),
    };
    Node { loc, value }
}
