//! JSON lines: one object per line.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::text::{RecordSource, Rescued, TextBatch, TextReader, open_text};
use crate::{ReadOptions, SourceError};

pub(crate) struct JsonLines {
    path: PathBuf,
    text: BufReader<Box<dyn Read + Send>>,
    /// The current line, its buffer reused from line to line.
    line: String,
    line_no: u64,
}

impl JsonLines {
    pub(crate) fn open(
        file: File,
        path: &Path,
        options: &ReadOptions,
        schema: SchemaRef,
    ) -> Result<TextReader<Self>, SourceError> {
        let text: Box<dyn Read + Send> = Box::new(open_text(file, path)?);
        let source = Self {
            path: path.to_path_buf(),
            text: BufReader::new(text),
            line: String::new(),
            line_no: 0,
        };
        Ok(TextReader::new(source, path, options, schema))
    }
}

impl RecordSource for JsonLines {
    fn push_next(&mut self, batch: &mut TextBatch) -> Result<bool, SourceError> {
        self.line.clear();
        let read = self.text.read_line(&mut self.line);
        if matches!(read, Ok(0)) {
            return Ok(false);
        }
        self.line_no += 1;
        match read {
            Ok(_) if self.line.trim().is_empty() => {}
            Ok(_) => {
                let line = self.line.strip_suffix('\n').unwrap_or(&self.line);
                push_object(batch, self.line_no, line.strip_suffix('\r').unwrap_or(line))
            }
            // Not UTF-8: keep what we can of the line rather than fail the file.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                batch.push_corrupt(self.line_no, "<line is not valid UTF-8>")
            }
            Err(e) => {
                return Err(SourceError {
                    line: Some(self.line_no),
                    ..SourceError::new(&self.path, e)
                });
            }
        }
        Ok(true)
    }
}

/// Adds one JSON line: its fields to their columns, other fields to `_rescued_data`.
pub(crate) fn push_object(batch: &mut TextBatch, line_no: u64, line: &str) {
    let mut fields: Vec<Option<Cow<str>>> = vec![None; batch.data_columns()];
    let mut rescued = Rescued::new();
    let record = Record {
        batch,
        fields: &mut fields,
        rescued: &mut rescued,
    };
    let mut de = serde_json::Deserializer::from_str(line);
    // Fields go straight to their column as text: no map or value tree per line.
    match de.deserialize_map(record).and_then(|()| de.end()) {
        Ok(()) => batch.push(line_no, fields, rescued),
        Err(_) => batch.push_corrupt(line_no, line),
    }
}

/// Visits one JSON object, routing each field to its column or to the rescued map. A field's
/// text borrows from the line unless it has escapes to undo.
struct Record<'a, 'de> {
    batch: &'a TextBatch,
    fields: &'a mut Vec<Option<Cow<'de, str>>>,
    rescued: &'a mut Rescued,
}

impl<'de> Visitor<'de> for Record<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed(self.batch))? {
            let value: &'de RawValue = map.next_value()?;
            match key {
                Key::Column(i) => {
                    self.fields[i] = raw_text(value).map_err(de::Error::custom)?;
                }
                Key::Other(_) if self.batch.ignore_new_fields => {}
                Key::Other(name) => {
                    self.rescued.insert(name, value.to_owned());
                }
            }
        }
        Ok(())
    }
}

/// A field name: the column it fills, or (only then allocated) the name it is rescued under.
enum Key {
    Column(usize),
    Other(String),
}

struct KeySeed<'a>(&'a TextBatch);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
        Ok(match self.0.column_index(name) {
            Some(i) => Key::Column(i),
            None => Key::Other(name.to_owned()),
        })
    }
}

/// The text of a JSON value as a raw column holds it: strings unquoted, null as NULL, and
/// everything else as written in the file. Numbers keep their digits (money must never pass
/// through a float: `12345678901234567.89` stays exact), nested values are their JSON text.
fn raw_text(value: &RawValue) -> Result<Option<Cow<'_, str>>, serde_json::Error> {
    let text = value.get();
    match text.as_bytes().first() {
        // Most strings have no escapes: their text is what lies between the quotes.
        Some(b'"') if !text.contains('\\') => Ok(Some(Cow::Borrowed(&text[1..text.len() - 1]))),
        Some(b'"') => serde_json::from_str::<String>(text).map(|s| Some(Cow::Owned(s))),
        Some(b'n') => Ok(None),
        _ => Ok(Some(Cow::Borrowed(text))),
    }
}
