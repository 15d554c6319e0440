use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use proptest::prelude::*;

use super::*;
use crate::file::FileInfo;

fn batch(times: Vec<i64>, values: Vec<Option<f64>>) -> RecordBatch {
    let n = times.len();
    let schema = Schema::new(vec![
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("device", DataType::Utf8, false),
        Field::new("gateway", DataType::Utf8, true),
        Field::new("owner", DataType::Utf8, true),
        Field::new("value", DataType::Float64, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
            Arc::new(StringArray::from(vec!["d"; n])),
            Arc::new(StringArray::from(vec![Some("gw"); n])),
            Arc::new(StringArray::from(vec![Some("u"); n])),
            Arc::new(Float64Array::from(values)),
        ],
    )
    .unwrap()
}

/// Encodes a day file and reads it back in the lake's types, with what its footer says.
fn round_trip(b: &RecordBatch) -> (RecordBatch, (FileInfo, StoredColumns)) {
    let bytes = Bytes::from(encode_day(b, WriterSettings::default(), 2).unwrap());
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
    let kv = reader.metadata().file_metadata().key_value_metadata();
    let info = (FileInfo::read(kv).unwrap(), read_stored(kv).unwrap());
    let batches: Vec<_> = reader.build().unwrap().map(|b| b.unwrap()).collect();
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    (restore(&all, &info.1).unwrap(), info)
}

fn bits(b: &RecordBatch) -> Vec<Option<u64>> {
    b.column_by_name("value")
        .unwrap()
        .as_primitive::<Float64Type>()
        .iter()
        .map(|v| v.map(f64::to_bits))
        .collect()
}

#[test]
fn rounded_readings_are_stored_as_decimals_and_millisecond_times() {
    let b = batch(
        vec![1_000_000, 10_999_000, 21_000_000],
        vec![Some(45.12345), None, Some(-0.00001)],
    );
    let (back, (info, stored)) = round_trip(&b);
    assert!(info.day && info.compacted);
    assert_eq!(info.format, 3);
    assert_eq!(stored.get("value"), Some(&Stored::Decimal(5)));
    assert_eq!(stored.get("time"), Some(&Stored::Millis));
    assert_eq!(back.schema(), b.schema());
    assert_eq!(bits(&back), bits(&b));
    assert_eq!(back.column(0).as_ref(), b.column(0).as_ref());
}

#[test]
fn values_no_decimal_holds_exactly_stay_floats() {
    for odd in [f64::NAN, f64::INFINITY, -0.0, 1e300, std::f64::consts::PI, 1e-12] {
        let b = batch(vec![1, 2], vec![Some(1.5), Some(odd)]);
        let (back, (_, stored)) = round_trip(&b);
        assert_eq!(stored.get("value"), None, "{odd}");
        assert_eq!(stored.get("time"), None, "µs times stay µs");
        assert_eq!(bits(&back), bits(&b), "{odd}");
    }
}

#[test]
fn a_stored_list_this_build_cannot_read_is_an_error() {
    let kv = vec![KeyValue::new(STORED_KEY.into(), "value=decimal:99".to_owned())];
    assert!(read_stored(Some(&kv)).is_err());
    let kv = vec![KeyValue::new(STORED_KEY.into(), "value=float16".to_owned())];
    assert!(read_stored(Some(&kv)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the floats (rounded decimals or any bits at all) and times, a day file
    /// gives back the very same bits.
    #[test]
    fn a_day_file_gives_back_the_same_bits(
        decimals in 0i32..12,
        raw in proptest::collection::vec(proptest::option::of(any::<f64>()), 1..200),
        round in any::<bool>(),
        ms in any::<bool>(),
    ) {
        let p = 10f64.powi(decimals);
        let values: Vec<Option<f64>> = raw
            .iter()
            .map(|v| v.map(|v| if round { ((v % 1e6) * p).round() / p } else { v }))
            .collect();
        let times: Vec<i64> = (0..values.len() as i64)
            .map(|i| i * 10_000_000 + if ms { (i % 7) * 1000 } else { i % 7 })
            .collect();
        let b = batch(times, values);
        let (back, _) = round_trip(&b);
        prop_assert_eq!(bits(&back), bits(&b));
        prop_assert_eq!(back.column(0).as_ref(), b.column(0).as_ref());
    }
}
