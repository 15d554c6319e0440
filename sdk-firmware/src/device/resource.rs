//! The resource tree a device exposes, and its description through the reserved `api` name.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use crate::pson::Value;

/// What kind of resource a node is; the `fn` code of §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// A parent node with only sub-resources (`fn` 0, left out of the description).
    None = 0,
    /// `thing["x"] = [](){}`
    Run = 1,
    /// `thing["x"] << [](pson& in){}`
    Input = 2,
    /// `thing["x"] >> [](pson& out){}`
    Output = 3,
    /// `thing["x"] = [](pson& in, pson& out){}`
    InputOutput = 4,
}

/// The `al` access level of a resource. What a server does with it is not specified;
/// Twinlake records it in the description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    #[default]
    Private = 0,
    Protected = 1,
    Public = 2,
}

type RunFn = Box<dyn FnMut() + Send>;
type InFn = Box<dyn FnMut(&mut Value) + Send>;
type OutFn = Box<dyn FnMut(&mut Value) + Send>;
type InOutFn = Box<dyn FnMut(&mut Value, &mut Value) + Send>;

enum Handler {
    None,
    Run(RunFn),
    Input(InFn),
    Output(OutFn),
    InputOutput(InOutFn),
}

/// One named resource and its sub-resources, in declaration order.
pub struct Resource {
    name: String,
    access: Access,
    handler: Handler,
    children: Vec<Resource>,
}

impl core::fmt::Debug for Resource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Resource")
            .field("name", &self.name)
            .field("io", &self.io())
            .field("children", &self.children)
            .finish()
    }
}

/// What running a resource produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The payload of the REQUEST_OK reply, if any.
    pub reply: Option<Value>,
    /// Whether an input changed (so an event stream on it should send the new state).
    pub wrote_input: bool,
}

impl Resource {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            access: Access::Private,
            handler: Handler::None,
            children: Vec::new(),
        }
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kind of resource.
    pub fn io(&self) -> Io {
        match self.handler {
            Handler::None => Io::None,
            Handler::Run(_) => Io::Run,
            Handler::Input(_) => Io::Input,
            Handler::Output(_) => Io::Output,
            Handler::InputOutput(_) => Io::InputOutput,
        }
    }

    /// The sub-resource `name`, created if missing.
    pub fn resource(&mut self, name: &str) -> &mut Resource {
        child_mut(&mut self.children, name)
    }

    /// Sets the access level.
    pub fn access(&mut self, access: Access) -> &mut Self {
        self.access = access;
        self
    }

    /// A run resource: called with no data.
    pub fn run(&mut self, f: impl FnMut() + Send + 'static) -> &mut Self {
        self.handler = Handler::Run(Box::new(f));
        self
    }

    /// An input resource (`<<`). The closure gets the written value; when it gets
    /// [`Value::Unset`] it should fill in the current state, which is how the platform
    /// reads an input's state.
    pub fn input(&mut self, f: impl FnMut(&mut Value) + Send + 'static) -> &mut Self {
        self.handler = Handler::Input(Box::new(f));
        self
    }

    /// A boolean input backed by shared state, like `thing["led"] << digitalPin(LED)`:
    /// writes set it, and reads (templates, event streams) report it.
    pub fn input_bool(&mut self, state: alloc::sync::Arc<core::sync::atomic::AtomicBool>) -> &mut Self {
        use core::sync::atomic::Ordering;
        self.input(move |v| match v.as_bool() {
            Some(on) => state.store(on, Ordering::Relaxed),
            None => *v = state.load(Ordering::Relaxed).into(),
        })
    }

    /// An output resource (`>>`): the closure fills in the value.
    pub fn output(&mut self, f: impl FnMut(&mut Value) + Send + 'static) -> &mut Self {
        self.handler = Handler::Output(Box::new(f));
        self
    }

    /// An input/output resource (`=`): the closure reads `in` and fills `out`. For the
    /// template `in` is [`Value::Unset`]; read it with [`Value::entry`] and
    /// `or_insert`-style defaults so the template shows its shape.
    pub fn input_output(&mut self, f: impl FnMut(&mut Value, &mut Value) + Send + 'static) -> &mut Self {
        self.handler = Handler::InputOutput(Box::new(f));
        self
    }

    /// Runs the resource with an optional input, as a server request does.
    pub fn invoke(&mut self, input: Option<Value>) -> Outcome {
        let mut outcome = Outcome {
            reply: None,
            wrote_input: false,
        };
        match &mut self.handler {
            Handler::None => {}
            Handler::Run(f) => f(),
            Handler::Input(f) => {
                let mut v = input.unwrap_or_default();
                outcome.wrote_input = !v.is_unset();
                f(&mut v);
            }
            Handler::Output(f) => {
                let mut out = Value::Unset;
                f(&mut out);
                outcome.reply = Some(out);
            }
            Handler::InputOutput(f) => {
                let mut v = input.unwrap_or_default();
                outcome.wrote_input = !v.is_unset();
                let mut out = Value::Unset;
                f(&mut v, &mut out);
                outcome.reply = Some(out);
            }
        }
        outcome
    }

    /// The I/O template `{"in":…}`, `{"out":…}`, both, or `{}` (`fill_api_io`). Runs the
    /// callback with an unset input, so it also shows the current state of inputs.
    pub fn template(&mut self) -> Value {
        let mut t = Value::object();
        match &mut self.handler {
            Handler::None | Handler::Run(_) => {}
            Handler::Input(f) => {
                let mut v = Value::Unset;
                f(&mut v);
                t = t.with("in", v);
            }
            Handler::Output(f) => {
                let mut out = Value::Unset;
                f(&mut out);
                t = t.with("out", out);
            }
            Handler::InputOutput(f) => {
                let (mut v, mut out) = (Value::Unset, Value::Unset);
                f(&mut v, &mut out);
                t = t.with("out", out).with("in", v);
            }
        }
        t
    }

    /// This resource's entry in a description: `al`/`fn` unless it is a bare parent, and
    /// `"/"` with its children when it has any (`fill_api`).
    pub(crate) fn api_entry(&self) -> Value {
        let mut e = Value::object();
        if self.io() != Io::None {
            e = e.with("al", self.access as i64).with("fn", self.io() as i64);
        }
        if !self.children.is_empty() {
            e = e.with("/", describe(&self.children));
        }
        e
    }
}

/// The description of a list of resources: one entry per resource, in declaration order.
pub(crate) fn describe(resources: &[Resource]) -> Value {
    Value::Object(resources.iter().map(|r| (r.name.clone(), r.api_entry())).collect())
}

/// The child `name` of `list`, created at the end if missing.
pub(crate) fn child_mut<'a>(list: &'a mut Vec<Resource>, name: &str) -> &'a mut Resource {
    let idx = match list.iter().position(|r| r.name == name) {
        Some(i) => i,
        None => {
            list.push(Resource::new(name));
            list.len() - 1
        }
    };
    #[allow(clippy::indexing_slicing)] // found or pushed just above
    &mut list[idx]
}

/// The resource at `path`, if it exists.
pub(crate) fn find_mut<'a, S: AsRef<str>>(list: &'a mut [Resource], path: &[S]) -> Option<&'a mut Resource> {
    let (first, rest) = path.split_first()?;
    let r = list.iter_mut().find(|r| r.name == first.as_ref())?;
    if rest.is_empty() {
        Some(r)
    } else {
        find_mut(&mut r.children, rest)
    }
}
