//! JSON lines: one object per line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use std::fmt;

use arrow::datatypes::SchemaRef;
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::SourceError;
use crate::text::{RecordSource, TextBatch, TextReader};

pub(crate) struct JsonLines {
    path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line_no: u64,
}

impl JsonLines {
    pub(crate) fn open(path: &Path, schema: SchemaRef) -> Result<TextReader<Self>, SourceError> {
        let file = File::open(path).map_err(|e| SourceError::new(path, e))?;
        let source = Self {
            path: path.to_path_buf(),
            lines: BufReader::new(file).lines(),
            line_no: 0,
        };
        Ok(TextReader::new(source, path, schema))
    }
}

impl RecordSource for JsonLines {
    fn push_next(&mut self, batch: &mut TextBatch) -> Result<bool, SourceError> {
        let Some(line) = self.lines.next() else {
            return Ok(false);
        };
        self.line_no += 1;
        match line {
            Ok(line) if line.trim().is_empty() => {}
            Ok(line) => push_object(batch, self.line_no, &line),
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
fn push_object(batch: &mut TextBatch, line_no: u64, line: &str) {
    let mut fields = vec![None; batch.data_columns()];
    let mut rescued = Map::new();
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

/// Visits one JSON object, routing each field to its column or to the rescued map.
struct Record<'a> {
    batch: &'a TextBatch,
    fields: &'a mut Vec<Option<String>>,
    rescued: &'a mut Map<String, Value>,
}

impl<'de> Visitor<'de> for Record<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed(self.batch))? {
            match key {
                Key::Column(i) => self.fields[i] = map.next_value::<RawText>()?.0,
                Key::Other(name) => {
                    let value: Value = map.next_value()?;
                    self.rescued.insert(name, value);
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

/// The text of a JSON value as a raw column holds it: strings unquoted, numbers and booleans
/// as written by JSON, nested values as JSON, null as NULL.
struct RawText(Option<String>);

impl<'de> Deserialize<'de> for RawText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawTextVisitor)
    }
}

struct RawTextVisitor;

impl<'de> Visitor<'de> for RawTextVisitor {
    type Value = RawText;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawText, E> {
        Ok(RawText(Some(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<RawText, E> {
        Ok(RawText(Some(v)))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawText, E> {
        Ok(RawText(Some(v.to_string())))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawText, E> {
        Ok(RawText(Some(v.to_string())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawText, E> {
        Ok(RawText(Some(v.to_string())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawText, E> {
        Ok(RawText(Some(Value::from(v).to_string())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawText, E> {
        Ok(RawText(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawText, A::Error> {
        let value = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(RawText(Some(value.to_string())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawText, A::Error> {
        let value = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(RawText(Some(value.to_string())))
    }
}
