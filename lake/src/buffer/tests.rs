//! The buffer's column rules, and payloads on the template path against the general one.

use arrow::array::{Array, Float64Array, Int64Array};

use super::*;
use crate::columns::OWNER;
use crate::path::HOUR_US;

/// A float or int column as f64 values.
fn column_f64(batch: &RecordBatch, name: &str) -> Option<Vec<Option<f64>>> {
    let col = batch.column_by_name(name)?;
    if let Some(a) = col.as_any().downcast_ref::<Float64Array>() {
        return Some(a.iter().collect());
    }
    col.as_any()
        .downcast_ref::<Int64Array>()
        .map(|a| a.iter().map(|v| v.map(|x| x as f64)).collect())
}

fn fv(pairs: &[(&'static str, FieldValue<'static>)]) -> Vec<(Cow<'static, str>, FieldValue<'static>)> {
    pairs.iter().map(|(k, v)| (Cow::Borrowed(*k), v.clone())).collect()
}

#[test]
fn columns_grow_widen_and_clashes_are_reported() {
    let mut b = Buffer::new("gw", Schemas::new());
    let mut conflicts = Vec::new();
    b.append(
        "t",
        2,
        Some("u"),
        "d2",
        &fv(&[("a", FieldValue::Int(1))]),
        &mut conflicts,
    );
    b.append(
        "t",
        1,
        Some("u"),
        "d1",
        &fv(&[("a", FieldValue::Float(2.5)), ("b", FieldValue::Bool(true))]),
        &mut conflicts,
    );
    b.append(
        "t",
        3,
        Some("u"),
        "d1",
        &fv(&[("a", FieldValue::Str("x".into())), ("b", FieldValue::Bool(false))]),
        &mut conflicts,
    );
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].column, "a");
    assert_eq!(
        b.schemas()["t"],
        vec![("a".into(), FieldType::Float), ("b".into(), FieldType::Bool)]
    );
    let sealed = b.seal().unwrap();
    assert_eq!(sealed.len(), 1);
    let (hour, batch) = &sealed[0].hours[0];
    assert_eq!(*hour, 0);
    assert_eq!(batch.num_rows(), 3);
    // Sorted by (device, time): d1@1, d1@3, d2@2.
    assert_eq!(column_f64(batch, "a").unwrap(), vec![Some(2.5), None, Some(1.0)]);
    assert_eq!(batch.schema().field(0).name(), "time");
    assert_eq!(b.rows(), 0);
}

#[test]
fn rows_of_two_users_stay_apart_and_sort_by_owner_first() {
    let mut b = Buffer::new("gw", Schemas::new());
    let mut conflicts = Vec::new();
    for (time, owner, v) in [
        (1, Some("globex"), 1),
        (2, Some("acme"), 2),
        (3, None, 3),
        (4, Some("globex"), 4),
    ] {
        b.append(
            "t",
            time,
            owner,
            "d1",
            &fv(&[("v", FieldValue::Int(v))]),
            &mut conflicts,
        );
    }
    let sealed = b.seal().unwrap();
    let batch = &sealed[0].hours[0].1;
    let owner = arrow::compute::cast(batch.column_by_name(OWNER).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
    let owner = owner.as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
    let owners: Vec<Option<&str>> = owner.iter().collect();
    // Nulls (owner unknown) sort first, then by owner, then by time.
    assert_eq!(owners, [None, Some("acme"), Some("globex"), Some("globex")]);
    assert_eq!(
        column_f64(batch, "v").unwrap(),
        vec![Some(3.0), Some(2.0), Some(1.0), Some(4.0)]
    );
    assert_eq!(batch.schema().field(3).name(), OWNER);
}

#[test]
fn rows_split_at_hour_boundaries() {
    let mut b = Buffer::new("gw", Schemas::new());
    let mut c = Vec::new();
    for t in [HOUR_US + 5, 10, HOUR_US - 1, 2 * HOUR_US] {
        b.append("t", t, Some("u"), "d", &fv(&[("v", FieldValue::Int(t))]), &mut c);
    }
    let sealed = b.seal().unwrap();
    let hours: Vec<(i64, usize)> = sealed[0].hours.iter().map(|(h, b)| (*h, b.num_rows())).collect();
    assert_eq!(hours, vec![(0, 2), (HOUR_US, 1), (2 * HOUR_US, 1)]);
}

/// A wide payload after many narrow rows (#13, finding 8): the nulls it back-fills count
/// toward the buffer's bytes, so a seal comes when memory says so; columns stop at
/// MAX_COLUMNS and over-long names are dropped, both counted.
#[test]
fn wide_payloads_are_counted_and_capped() {
    let mut b = Buffer::new("gw", Schemas::default());
    let mut conflicts = Vec::new();
    for i in 0..1000 {
        b.append(
            "t",
            i,
            Some("u"),
            "d",
            &fv(&[("v", FieldValue::Int(i))]),
            &mut conflicts,
        );
    }
    let narrow = b.bytes();
    let names: Vec<String> = (0..2000).map(|k| format!("k{k}")).collect();
    let mut wide: Vec<(Cow<'_, str>, FieldValue<'_>)> = names
        .iter()
        .map(|n| (Cow::Borrowed(n.as_str()), FieldValue::Int(1)))
        .collect();
    let long = "x".repeat(MAX_COLUMN_NAME + 1);
    wide.push((Cow::Borrowed(long.as_str()), FieldValue::Int(1)));
    b.append("t", 1000, Some("u"), "d", &wide, &mut conflicts);
    // 1,023 new columns, each back-filled for 1,000 rows.
    assert!(
        b.bytes() - narrow >= 1023 * 1000 * NULL_BYTES,
        "{} -> {}",
        narrow,
        b.bytes()
    );
    assert_eq!(b.schemas()["t"].len(), MAX_COLUMNS);
    assert_eq!(b.take_dropped(), 2000 - 1023 + 1);
    assert_eq!(b.take_dropped(), 0);
    // A narrow row after it pays for the nulls it leaves.
    let before = b.bytes();
    b.append(
        "t",
        1001,
        Some("u"),
        "d",
        &fv(&[("v", FieldValue::Int(1))]),
        &mut conflicts,
    );
    assert!(b.bytes() - before >= 1023 * NULL_BYTES);
}

/// Rows whose fields change order or names between them still land in their columns
/// (the shape of the last row is only a hint).
#[test]
fn fields_find_their_columns_whatever_the_shape() {
    let mut b = Buffer::new("gw", Schemas::new());
    let mut conflicts = Vec::new();
    let rows: [&[(&'static str, i64)]; 5] = [
        &[("a", 1), ("b", 2)],
        &[("b", 3), ("a", 4)],
        &[("a", 5), ("c", 6)],
        &[("a", 7), ("b", 8)],
        &[("c", 9)],
    ];
    for (t, row) in rows.iter().enumerate() {
        let fields: Vec<_> = row
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), FieldValue::Int(*v)))
            .collect();
        b.append("t", t as i64, Some("u"), "d", &fields, &mut conflicts);
    }
    let sealed = b.seal().unwrap();
    let batch = &sealed[0].hours[0].1;
    let f = |x: Option<f64>| x;
    assert_eq!(
        column_f64(batch, "a").unwrap(),
        [Some(1.0), Some(4.0), Some(5.0), Some(7.0), None].map(f)
    );
    assert_eq!(
        column_f64(batch, "b").unwrap(),
        [Some(2.0), Some(3.0), None, Some(8.0), None].map(f)
    );
    assert_eq!(
        column_f64(batch, "c").unwrap(),
        [None, None, Some(6.0), None, Some(9.0)].map(f)
    );
    assert!(conflicts.is_empty());
}

mod templates {
    use proptest::prelude::*;
    use twinlake_sdk::pson::Value;

    use super::*;

    /// A field's kind in a generated payload shape.
    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Double,
        Float,
        Bool,
        Int,
        Str,
        Bytes,
        Null,
        Nested,
        Array,
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Double),
            Just(Kind::Float),
            Just(Kind::Bool),
            Just(Kind::Int),
            Just(Kind::Str),
            Just(Kind::Bytes),
            Just(Kind::Null),
            Just(Kind::Nested),
            Just(Kind::Array),
        ]
    }

    /// A value of `kind`; `seed` picks it, so that rows of one shape differ in their values
    /// and now and then in their encoded sizes.
    fn value(kind: Kind, seed: u64) -> Value {
        let pick = |n: u64| (seed % n) as usize;
        match kind {
            Kind::Double => Value::Double(seed as f64 / 7.0),
            Kind::Float => Value::Float((seed % 50) as f32 / 10.0),
            Kind::Bool => Value::Bool(seed.is_multiple_of(2)),
            Kind::Int => [
                Value::Int(0),
                Value::Int(1),
                Value::Int(-1),
                Value::Int(5),
                Value::Int(200),
                Value::Int(-300),
                Value::Int(i64::MAX),
                Value::Int(i64::MIN),
                Value::UInt(u64::MAX),
            ]
            .get(pick(9))
            .cloned()
            .unwrap_or(Value::Null),
            Kind::Str => Value::Str(["", "ok", "no", "ünï"].get(pick(4)).copied().unwrap_or("").into()),
            Kind::Bytes => Value::Bytes(vec![seed as u8; pick(3)]),
            Kind::Null if seed.is_multiple_of(3) => Value::Unset,
            Kind::Null => Value::Null,
            Kind::Nested => Value::Object(vec![
                ("p".into(), value(Kind::Double, seed)),
                ("q".into(), value(Kind::Int, seed / 3)),
            ]),
            Kind::Array => Value::Array(vec![Value::Int(seed as i64)]),
        }
    }

    /// Shapes: keys (some repeated, some named like fixed columns) and kinds.
    fn shapes() -> impl Strategy<Value = Vec<Vec<(&'static str, Kind)>>> {
        let key = prop::sample::select(vec!["a", "b", "c", "time", "out", "a.p"]);
        prop::collection::vec(prop::collection::vec((key, kind()), 0..5), 1..4)
    }

    /// A row: its shape, the seed of its values, whether it is a stream's (and wrapped as
    /// `{"out": v}` then), its device and its owner.
    fn rows() -> impl Strategy<Value = Vec<(usize, u64, bool, usize, bool)>> {
        prop::collection::vec((0usize..3, 0u64..40, any::<bool>(), 0usize..3, any::<bool>()), 1..40)
    }

    fn payload(shape: &[(&str, Kind)], seed: u64, stream: bool) -> Vec<u8> {
        let v = Value::Object(
            shape
                .iter()
                .enumerate()
                .map(|(i, (k, kind))| ((*k).to_owned(), value(*kind, seed + i as u64)))
                .collect(),
        );
        let v = if stream && seed.is_multiple_of(2) {
            Value::Object(vec![("out".into(), v)])
        } else {
            v
        };
        v.to_bytes()
    }

    proptest! {
        /// Whatever the payloads, a buffer that takes them through templates stores what one
        /// that flattens every payload stores: the same batches, schemas, conflicts, drops
        /// and byte counts.
        #[test]
        fn templates_store_what_flattening_stores(shapes in shapes(), rows in rows()) {
            let (mut fast, mut slow) = (Buffer::new("gw", Schemas::new()), Buffer::new("gw", Schemas::new()));
            let (mut fast_c, mut slow_c) = (Vec::new(), Vec::new());
            for (i, &(shape, seed, stream, device, owned)) in rows.iter().enumerate() {
                let Some(shape) = shapes.get(shape % shapes.len()) else { continue };
                let bytes = payload(shape, seed, stream);
                let v = ValueRef::decode(&bytes).unwrap();
                let owner = owned.then_some("u");
                let device = ["d0", "d1", "d2"][device];
                let table = if seed.is_multiple_of(5) { "t2" } else { "t" };
                let n = fast.append_payload(table, i as i64, (owner, device), (v, stream), &mut fast_c);
                let mut fields = Vec::new();
                flatten(v, stream, &mut fields);
                slow.append(table, i as i64, owner, device, &fields, &mut slow_c);
                prop_assert_eq!(n, fields.len() as u64);
            }
            prop_assert_eq!(&fast_c, &slow_c);
            prop_assert_eq!(fast.schemas(), slow.schemas());
            prop_assert_eq!(fast.bytes(), slow.bytes());
            prop_assert_eq!(fast.take_dropped(), slow.take_dropped());
            let (a, b) = (fast.seal().unwrap(), slow.seal().unwrap());
            prop_assert_eq!(a.len(), b.len());
            for (a, b) in a.iter().zip(&b) {
                prop_assert_eq!(&a.table, &b.table);
                prop_assert_eq!(&a.hours, &b.hours);
            }
        }
    }

    /// Readings of one shape take the template after the first; a row of another shape
    /// takes the general path and the one after it its own template.
    #[test]
    fn rows_of_one_shape_skip_flattening() {
        let mut b = Buffer::new("gw", Schemas::new());
        let mut c = Vec::new();
        let shape = [
            ("temp", Kind::Double),
            ("on", Kind::Bool),
            ("n", Kind::Int),
            ("at", Kind::Nested),
        ];
        for seed in 0..100 {
            let bytes = payload(&shape, seed * 9, false);
            b.append_payload(
                "t",
                seed as i64,
                (Some("u"), "d"),
                (ValueRef::decode(&bytes).unwrap(), false),
                &mut c,
            );
        }
        // Seeds whose ints need another varint length miss; the rest hit.
        assert!(b.templated_rows() >= 50, "{}", b.templated_rows());
        let before = b.templated_rows();
        let other = payload(&[("label", Kind::Str)], 1, false);
        for _ in 0..2 {
            b.append_payload(
                "t",
                100,
                (Some("u"), "d"),
                (ValueRef::decode(&other).unwrap(), false),
                &mut c,
            );
        }
        assert_eq!(b.templated_rows(), before + 1);
        assert!(c.is_empty(), "{c:?}");
    }
}
