//! JSONC text to a JSON value, keeping where each value and property name starts so
//! later checks can point at them.

use std::collections::HashMap;

use jsonc_parser::ast;
use serde_json::{Map, Number, Value};

use crate::{Error, MAX_DEPTH, MAX_FILE_BYTES};

/// A parsed devcontainer.json: its value and the positions of what is in it, by JSON
/// pointer (RFC 6901).
#[derive(Debug, Clone)]
pub struct Document {
    /// Repository-relative path, for messages.
    pub file: String,
    pub value: Value,
    text: String,
    /// Byte offset of each value.
    values: HashMap<String, usize>,
    /// Byte offset of each object property's name.
    names: HashMap<String, usize>,
}

impl Document {
    /// Parses `text` as JSONC the way VS Code's parser (which the reference CLI uses)
    /// accepts it: JSON plus comments and trailing commas, nothing else of JSON5.
    pub fn parse(file: &str, text: &str) -> Result<Document, Error> {
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(Error::TooLarge {
                path: file.to_string(),
                max: MAX_FILE_BYTES,
            });
        }
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let options = jsonc_parser::ParseOptions {
            allow_comments: true,
            allow_trailing_commas: true,
            allow_loose_object_property_names: false,
            allow_missing_commas: false,
            allow_single_quoted_strings: false,
            allow_hexadecimal_numbers: false,
            allow_unary_plus_numbers: false,
            allow_bare_decimal_point_numbers: false,
            allow_non_finite_numbers: false,
            allow_extended_string_escapes: false,
        };
        let parsed =
            jsonc_parser::parse_to_ast(text, &Default::default(), &options).map_err(|e| {
                Error::Syntax {
                    file: file.to_string(),
                    line: e.line_display(),
                    column: e.column_display(),
                    message: lower_first(&e.kind().to_string()),
                }
            })?;
        let mut doc = Document {
            file: file.to_string(),
            value: Value::Null,
            text: text.to_string(),
            values: HashMap::new(),
            names: HashMap::new(),
        };
        let Some(root) = parsed.value else {
            return Err(doc.invalid("", "the file is empty: it must hold a JSON object"));
        };
        let value = doc.convert(&root, String::new(), 0)?;
        if !value.is_object() {
            return Err(doc.invalid("", "the configuration must be a JSON object"));
        }
        doc.value = value;
        Ok(doc)
    }

    fn convert(&mut self, v: &ast::Value, ptr: String, depth: usize) -> Result<Value, Error> {
        let start = match v {
            ast::Value::StringLit(s) => s.range.start,
            ast::Value::NumberLit(n) => n.range.start,
            ast::Value::BooleanLit(b) => b.range.start,
            ast::Value::Object(o) => o.range.start,
            ast::Value::Array(a) => a.range.start,
            ast::Value::NullKeyword(n) => n.range.start,
        };
        self.values.insert(ptr.clone(), start);
        if depth > MAX_DEPTH {
            return Err(self.invalid(&ptr, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(match v {
            ast::Value::StringLit(s) => Value::String(s.value.to_string()),
            ast::Value::NumberLit(n) => match n.value.parse::<Number>() {
                Ok(num) => Value::Number(num),
                Err(_) => match n.value.parse::<f64>().ok().and_then(Number::from_f64) {
                    Some(num) => Value::Number(num),
                    None => return Err(self.invalid(&ptr, format!("bad number {}", n.value))),
                },
            },
            ast::Value::BooleanLit(b) => Value::Bool(b.value),
            ast::Value::NullKeyword(_) => Value::Null,
            ast::Value::Array(a) => {
                let mut out = Vec::with_capacity(a.elements.len());
                for (i, e) in a.elements.iter().enumerate() {
                    out.push(self.convert(e, format!("{ptr}/{i}"), depth + 1)?);
                }
                Value::Array(out)
            }
            ast::Value::Object(o) => {
                let mut out = Map::new();
                for p in &o.properties {
                    let key = p.name.as_str().to_string();
                    let child = format!("{ptr}/{}", escape(&key));
                    self.names.insert(child.clone(), p.range.start);
                    // As in JavaScript: a repeated key's last value wins.
                    let val = self.convert(&p.value, child, depth + 1)?;
                    out.insert(key, val);
                }
                Value::Object(out)
            }
        })
    }

    /// 1-based line and column of the value at `ptr` (or the nearest enclosing one).
    pub fn position(&self, ptr: &str) -> (usize, usize) {
        self.at(lookup(&self.values, ptr))
    }

    /// 1-based line and column of the property name at `ptr`.
    pub fn name_position(&self, ptr: &str) -> (usize, usize) {
        match self.names.get(ptr) {
            Some(&o) => self.at(o),
            None => self.position(ptr),
        }
    }

    fn at(&self, offset: usize) -> (usize, usize) {
        let mut line = 1;
        let mut col = 1;
        let before = self.text.get(..offset).unwrap_or(&self.text);
        for (i, c) in before.char_indices() {
            if c == '\n' || (c == '\r' && self.text.as_bytes().get(i + 1) != Some(&b'\n')) {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        (line, col)
    }

    /// An error about the value at `ptr`.
    pub fn invalid(&self, ptr: &str, message: impl Into<String>) -> Error {
        let (line, column) = self.position(ptr);
        Error::Invalid {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    /// An error about the property name at `ptr` (a feature id, a key that is wrong).
    pub fn invalid_name(&self, ptr: &str, message: impl Into<String>) -> Error {
        let (line, column) = self.name_position(ptr);
        Error::Invalid {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    /// A warning about the property at `ptr`.
    pub fn warning(&self, ptr: &str, message: impl Into<String>) -> crate::Warning {
        let (line, column) = self.name_position(ptr);
        crate::Warning {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        }
    }
}

fn lookup(map: &HashMap<String, usize>, ptr: &str) -> usize {
    let mut p = ptr;
    loop {
        if let Some(&o) = map.get(p) {
            return o;
        }
        match p.rfind('/') {
            Some(i) => p = &p[..i],
            None => return 0,
        }
    }
}

/// A key as a JSON pointer segment.
pub(crate) fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}
