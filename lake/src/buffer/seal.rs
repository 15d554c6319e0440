//! The seal: buffered rows become Arrow batches, sorted by (owner, device, time) and cut at
//! hour boundaries.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, DictionaryArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{Field, Int32Type, Schema, SchemaRef};

use super::{SealedTable, Table};
use crate::columns::{OWNER, dictionary_type, field_data_type as data_type, time_type};
use crate::path::HOUR_US;

/// Rows taken out of a [`Buffer`], not yet sorted.
pub struct Unsealed {
    pub(super) gateway: String,
    /// In name order.
    pub(super) tables: Vec<Table>,
}

impl std::fmt::Debug for Unsealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsealed").field("tables", &self.tables.len()).finish()
    }
}

impl Unsealed {
    /// The rows, sorted by (owner, device, time) and split into hour partitions.
    pub fn seal(self) -> Result<Vec<SealedTable>, arrow::error::ArrowError> {
        let tables = self.tables;
        let mut out = Vec::with_capacity(tables.len());
        for mut t in tables {
            if t.time.is_empty() {
                continue;
            }
            let rows = t.time.len();
            let mut fields = vec![
                Field::new("time", time_type(), false),
                Field::new("device", dictionary_type(), false),
                Field::new("gateway", dictionary_type(), false),
                Field::new(OWNER, dictionary_type(), true),
            ];
            let time: ArrayRef =
                Arc::new(TimestampMicrosecondArray::from(std::mem::take(&mut t.time)).with_timezone("UTC"));
            let device: ArrayRef = Arc::new(t.device.finish());
            let gateway: ArrayRef = Arc::new(DictionaryArray::<Int32Type>::new(
                arrow::array::Int32Array::from(vec![0; rows]),
                Arc::new(arrow::array::StringArray::from(vec![self.gateway.as_str()])),
            ));
            let owner: ArrayRef = Arc::new(t.owner.finish());
            let mut arrays = vec![time.clone(), device.clone(), gateway, owner.clone()];
            for col in &mut t.columns {
                fields.push(Field::new(&col.name, data_type(col.ty), true));
                arrays.push(col.builder.finish());
            }
            let schema: SchemaRef = Arc::new(Schema::new(fields));
            let batch = RecordBatch::try_new(schema, arrays)?;
            out.push(SealedTable {
                table: t.name,
                hours: split_hours(batch, &time, &[owner, device])?,
            });
        }
        Ok(out)
    }
}

/// Sorts by (hour, keys…, time) and cuts the batch at hour boundaries.
fn split_hours(
    batch: RecordBatch,
    time: &ArrayRef,
    keys: &[ArrayRef],
) -> Result<Vec<(i64, RecordBatch)>, arrow::error::ArrowError> {
    let times = time
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .map(|a| a.values().to_vec())
        .unwrap_or_default();
    let indices = match dictionary_ranks(keys, times.len()) {
        Some(ranks) => sort_by_ranks(&times, &ranks),
        None => {
            let hour: ArrayRef = Arc::new(Int64Array::from_iter_values(
                times.iter().map(|t| t.div_euclid(HOUR_US)),
            ));
            let sort: Vec<SortColumn> = std::iter::once(&hour)
                .chain(keys)
                .chain(std::iter::once(time))
                .map(|values| SortColumn {
                    values: values.clone(),
                    options: None,
                })
                .collect();
            lexsort_to_indices(&sort, None)?
        }
    };
    let sorted = take_record_batch(&batch, &indices)?;
    let hours: Vec<i64> = indices
        .values()
        .iter()
        .map(|&i| times.get(i as usize).copied().unwrap_or_default().div_euclid(HOUR_US))
        .collect();
    let mut out = Vec::new();
    let mut start = 0;
    while start < hours.len() {
        let h = hours.get(start).copied().unwrap_or_default();
        let end = hours
            .iter()
            .skip(start)
            .position(|x| *x != h)
            .map_or(hours.len(), |p| start + p);
        out.push((h * HOUR_US, sorted.slice(start, end - start)));
        start = end;
    }
    Ok(out)
}

/// Each row's place in the order of the key columns' values (strings in dictionaries, nulls
/// first), all keys packed in one number: sorting by it sorts as comparing the strings would,
/// with the strings compared once per distinct value rather than per row. `None` if a key is
/// not such a dictionary or the ranks do not fit in 64 bits.
fn dictionary_ranks(keys: &[ArrayRef], rows: usize) -> Option<Vec<u64>> {
    let mut packed = vec![0u64; rows];
    let mut bits = 0;
    for key in keys {
        let dict = key.as_any().downcast_ref::<DictionaryArray<Int32Type>>()?;
        let values = dict.values().as_any().downcast_ref::<StringArray>()?;
        let mut order: Vec<usize> = (0..values.len()).collect();
        let value = |i: usize| values.is_valid(i).then(|| values.value(i));
        order.sort_unstable_by(|a, b| value(*a).cmp(&value(*b)));
        // Rank 0 is null; equal values share a rank.
        let mut rank_of = vec![0u64; values.len()];
        let (mut rank, mut last) = (0u64, None);
        for &i in &order {
            let v = value(i);
            if v.is_some() && (rank == 0 || v != last) {
                rank += 1;
            }
            last = v;
            if let Some(r) = rank_of.get_mut(i) {
                *r = if v.is_some() { rank } else { 0 };
            }
        }
        let width = 64 - rank.leading_zeros();
        bits += width;
        if bits > 64 || dict.len() != rows {
            return None;
        }
        for (p, k) in packed.iter_mut().zip(dict.keys().iter()) {
            let r = k
                .and_then(|k| rank_of.get(usize::try_from(k).ok()?).copied())
                .unwrap_or(0);
            *p = p.checked_shl(width).unwrap_or(0) | r;
        }
    }
    Some(packed)
}

/// Row indices in (hour, ranks, time) order; rows equal in all three keep their order.
///
/// Rows come in runs of one device, times rising: a stable counting sort puts them in
/// groups of one (hour, rank), in key order, and only a group whose times are out of order
/// is sorted by time. Linear in the rows where a comparison sort is not.
fn sort_by_ranks(times: &[i64], ranks: &[u64]) -> UInt32Array {
    let time = |i: u32| times.get(i as usize).copied().unwrap_or_default();
    let key = |(t, r): (&i64, &u64)| (t.div_euclid(HOUR_US), *r);
    // Each row's group, numbered as first seen.
    let mut groups: HashMap<(i64, u64), usize> = HashMap::new();
    let mut last: Option<((i64, u64), usize)> = None;
    let row_group: Vec<usize> = times
        .iter()
        .zip(ranks)
        .map(|row| {
            let k = key(row);
            let g = match last {
                Some((lk, g)) if lk == k => g,
                _ => {
                    let next = groups.len();
                    *groups.entry(k).or_insert(next)
                }
            };
            last = Some((k, g));
            g
        })
        .collect();
    // Where each group starts in the output, groups in key order.
    let mut ordered: Vec<((i64, u64), usize)> = groups.into_iter().collect();
    ordered.sort_unstable();
    let mut sizes = vec![0usize; ordered.len()];
    for &g in &row_group {
        if let Some(n) = sizes.get_mut(g) {
            *n += 1;
        }
    }
    let mut next = vec![0usize; ordered.len()];
    let mut bounds = Vec::with_capacity(ordered.len() + 1);
    let mut at = 0;
    for &(_, g) in &ordered {
        bounds.push(at);
        if let (Some(n), Some(size)) = (next.get_mut(g), sizes.get(g)) {
            *n = at;
            at += size;
        }
    }
    bounds.push(at);
    let mut idx = vec![0u32; row_group.len()];
    for (row, &g) in row_group.iter().enumerate() {
        if let Some(n) = next.get_mut(g) {
            if let Some(slot) = idx.get_mut(*n) {
                *slot = u32::try_from(row).unwrap_or(u32::MAX);
            }
            *n += 1;
        }
    }
    for w in bounds.windows(2) {
        if let [from, to] = *w
            && let Some(group) = idx.get_mut(from..to)
            && !group.is_sorted_by_key(|&i| time(i))
        {
            group.sort_by_key(|&i| time(i));
        }
    }
    UInt32Array::from(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The seal's sort by dictionary ranks orders rows exactly as Arrow's lexsort over the
        /// strings does (nulls first), and keeps the arrival order of rows equal in every key.
        #[test]
        fn rank_sort_orders_as_the_strings_do(rows in proptest::collection::vec(
            (proptest::option::of(0u8..3), proptest::option::of(0u8..5), -3i64..3), 1..60)
        ) {
            use arrow::compute::take;
            let owner: DictionaryArray<Int32Type> = rows.iter().map(|r| r.0.map(|o| ["u0", "u1", "u10"][o as usize])).collect();
            let device: DictionaryArray<Int32Type> = rows.iter().map(|r| r.1.map(|d| ["d", "d1", "d10", "d2", "e"][d as usize])).collect();
            let times: Vec<i64> = rows.iter().map(|r| r.2 * HOUR_US / 2).collect();
            let keys: [ArrayRef; 2] = [Arc::new(owner), Arc::new(device)];
            let ranks = dictionary_ranks(&keys, rows.len()).expect("dictionaries of strings");
            let ours = sort_by_ranks(&times, &ranks);
            let time: ArrayRef = Arc::new(Int64Array::from(times.clone()));
            let hour: ArrayRef = Arc::new(Int64Array::from_iter_values(times.iter().map(|t| t.div_euclid(HOUR_US))));
            let sort: Vec<SortColumn> = [&hour, &keys[0], &keys[1], &time]
                .into_iter()
                .map(|values| SortColumn { values: values.clone(), options: None })
                .collect();
            let theirs = lexsort_to_indices(&sort, None).unwrap();
            for col in [&hour, &keys[0], &keys[1], &time] {
                let a = arrow::compute::cast(&take(col, &ours, None).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
                let b = arrow::compute::cast(&take(col, &theirs, None).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
                proptest::prop_assert_eq!(a.to_data(), b.to_data());
            }
            // Ties keep arrival order.
            for w in ours.values().windows(2) {
                let (i, j) = (w[0] as usize, w[1] as usize);
                if (times[i], ranks[i]) == (times[j], ranks[j]) {
                    proptest::prop_assert!(i < j);
                }
            }
        }
    }
}
