//! The TSBS "iot" truck readings (../shared/specs/tsbs-iot.md §2.1), re-implemented:
//! seeded and deterministic. Seven clamped random walks per truck, rounded to their decimals.
//! The batch "realism knobs" (missing and out-of-order entries) are left out: the storage
//! reference figures are for the plain readings model.

/// xorshift64*: small, fast, deterministic.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// (name, step, min, max, start as a fraction of max or a constant, decimals)
const FIELDS: [(&str, f64, f64, f64, Start, i32); 7] = [
    ("latitude", 0.005, -90.0, 90.0, Start::Unit(90.0), 5),
    ("longitude", 0.005, -180.0, 180.0, Start::Unit(180.0), 5),
    ("elevation", 10.0, 0.0, 5000.0, Start::Unit(500.0), 0),
    ("velocity", 10.0, 0.0, 100.0, Start::Fixed(0.0), 0),
    ("heading", 5.0, 0.0, 360.0, Start::Unit(360.0), 0),
    ("grade", 5.0, 0.0, 100.0, Start::Fixed(0.0), 0),
    ("fuel_consumption", 5.0, 0.0, 50.0, Start::Fixed(25.0), 1),
];

#[derive(Clone, Copy)]
enum Start {
    Unit(f64),
    Fixed(f64),
}

pub const FIELD_NAMES: [&str; 7] = [
    FIELDS[0].0,
    FIELDS[1].0,
    FIELDS[2].0,
    FIELDS[3].0,
    FIELDS[4].0,
    FIELDS[5].0,
    FIELDS[6].0,
];

/// One truck's walk.
#[derive(Debug)]
pub struct Truck {
    values: [f64; 7],
}

fn round(v: f64, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (v * p).round() / p
}

impl Truck {
    pub fn new(rng: &mut Rng) -> Self {
        let mut values = [0.0; 7];
        for (v, f) in values.iter_mut().zip(FIELDS.iter()) {
            *v = match f.4 {
                Start::Unit(m) => rng.unit() * m,
                Start::Fixed(c) => c,
            };
        }
        Self { values }
    }

    /// Advances one tick and returns the rounded readings.
    pub fn tick(&mut self, rng: &mut Rng) -> [f64; 7] {
        let mut out = [0.0; 7];
        for ((v, f), o) in self.values.iter_mut().zip(FIELDS.iter()).zip(out.iter_mut()) {
            let step = (rng.unit() * 2.0 - 1.0) * f.1;
            *v = (*v + step).clamp(f.2, f.3);
            *o = round(*v, f.5);
        }
        out
    }
}

/// One reading as the PSON object a device sends: the seven fields as doubles.
pub fn pson(v: [f64; 7]) -> twinlake_sdk::pson::Value {
    use twinlake_sdk::pson::Value;
    Value::Object(
        FIELD_NAMES
            .iter()
            .zip(v)
            .map(|(k, x)| ((*k).to_owned(), Value::Double(x)))
            .collect(),
    )
}
