//! Result encodings for `POST /v1/sql`: a JSON array of objects, NDJSON, CSV with a header,
//! or an Arrow IPC stream. Each encodes batch by batch, so results stream.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::QueryError;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
    Csv,
    Arrow,
}

impl Format {
    /// From a `format=` value or an Accept media type.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "json" | "application/json" => Format::Json,
            "ndjson" | "jsonl" | "application/x-ndjson" | "application/jsonl" => Format::Ndjson,
            "csv" | "text/csv" => Format::Csv,
            "arrow" | "ipc" | "application/vnd.apache.arrow.stream" => Format::Arrow,
            _ => return None,
        })
    }

    /// The response's Content-Type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

/// Encodes one result, batch by batch.
pub struct Encoder {
    format: Format,
    started: bool,
    rows: usize,
    ipc: Option<arrow::ipc::writer::StreamWriter<Vec<u8>>>,
    schema: SchemaRef,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("format", &self.format)
            .field("rows", &self.rows)
            .finish()
    }
}

impl Encoder {
    pub fn new(format: Format, schema: SchemaRef) -> Self {
        Self {
            format,
            started: false,
            rows: 0,
            ipc: None,
            schema,
        }
    }

    /// The Arrow IPC writer, made at first use.
    fn ipc(&mut self) -> Result<&mut arrow::ipc::writer::StreamWriter<Vec<u8>>, QueryError> {
        if self.ipc.is_none() {
            self.ipc = Some(arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &self.schema)?);
        }
        self.ipc
            .as_mut()
            .ok_or_else(|| QueryError::Catalog("the Arrow writer is gone".into()))
    }

    /// Rows encoded so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The bytes of one batch.
    pub fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, QueryError> {
        let mut out = Vec::new();
        let first = !self.started;
        self.started = true;
        match self.format {
            Format::Json | Format::Ndjson => {
                let mut lines = Vec::new();
                {
                    let mut w = arrow::json::WriterBuilder::new()
                        .with_explicit_nulls(true)
                        .build::<_, arrow::json::writer::LineDelimited>(&mut lines);
                    w.write(batch)?;
                    w.finish()?;
                }
                if self.format == Format::Ndjson {
                    out = lines;
                } else {
                    if first {
                        out.push(b'[');
                    }
                    for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        if self.rows > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(line);
                        self.rows += 1;
                    }
                    return Ok(out);
                }
            }
            Format::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(first)
                    .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.fZ".to_string())
                    .build(&mut out);
                w.write(batch)?;
            }
            Format::Arrow => {
                let w = self.ipc()?;
                w.write(batch)?;
                out = std::mem::take(w.get_mut());
            }
        }
        self.rows += batch.num_rows();
        Ok(out)
    }

    /// The closing bytes.
    pub fn finish(&mut self) -> Result<Vec<u8>, QueryError> {
        Ok(match self.format {
            Format::Json => {
                if self.started {
                    b"]".to_vec()
                } else {
                    b"[]".to_vec()
                }
            }
            Format::Ndjson => Vec::new(),
            Format::Csv => {
                if self.started {
                    Vec::new()
                } else {
                    // The header of an empty result.
                    let names: Vec<&str> = self.schema.fields().iter().map(|f| f.name().as_str()).collect();
                    format!("{}\n", names.join(",")).into_bytes()
                }
            }
            Format::Arrow => {
                let w = self.ipc()?;
                w.finish()?;
                std::mem::take(w.get_mut())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("d", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap()
    }

    fn encode(format: Format, batches: usize) -> String {
        let b = batch();
        let mut e = Encoder::new(format, b.schema());
        let mut out = Vec::new();
        for _ in 0..batches {
            out.extend(e.batch(&b).unwrap());
        }
        out.extend(e.finish().unwrap());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_is_one_array_over_batches() {
        let s = encode(Format::Json, 2);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 4);
        assert_eq!(v[1]["d"], serde_json::Value::Null);
        assert_eq!(encode(Format::Json, 0), "[]");
    }

    #[test]
    fn csv_has_one_header() {
        assert_eq!(encode(Format::Csv, 2), "d,n\na,1\n,2\na,1\n,2\n");
        assert_eq!(encode(Format::Csv, 0), "d,n\n");
        assert_eq!(
            encode(Format::Ndjson, 1),
            "{\"d\":\"a\",\"n\":1}\n{\"d\":null,\"n\":2}\n"
        );
    }
}
