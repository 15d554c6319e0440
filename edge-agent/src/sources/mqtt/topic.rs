//! Topic templates: `sensors/{device}/{resource}` as an MQTT filter and a matcher.

use std::fmt;

/// One level of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Device,
    Resource,
    /// `+`: any one level, ignored.
    Any,
    /// `#`: every level left (last only).
    Rest,
}

/// A topic template: literal levels, `{device}`, `{resource}`, `+` and a final `#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    levels: Vec<Level>,
}

/// What a topic said about its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captures<'a> {
    pub device: Option<&'a str>,
    pub resource: Option<&'a str>,
    /// The levels `#` matched, joined by `/` (empty if none).
    pub rest: &'a str,
}

impl TopicTemplate {
    /// Parses a template; the error says which level is wrong.
    pub fn parse(template: &str) -> Result<Self, String> {
        if template.is_empty() {
            return Err("an empty topic".into());
        }
        let parts: Vec<&str> = template.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let level = match *p {
                "{device}" => Level::Device,
                "{resource}" => Level::Resource,
                "+" => Level::Any,
                "#" if i + 1 == parts.len() => Level::Rest,
                "#" => return Err(format!("{template:?}: '#' must be the last level")),
                p if p.contains(['+', '#', '{', '}']) => {
                    return Err(format!(
                        "{template:?}: level {p:?} mixes text with a wildcard (use a whole level: + # {{device}} {{resource}})"
                    ));
                }
                p => Level::Literal(p.to_owned()),
            };
            if matches!(level, Level::Device) && levels.contains(&Level::Device)
                || matches!(level, Level::Resource) && levels.contains(&Level::Resource)
            {
                return Err(format!("{template:?}: {p} appears twice"));
            }
            levels.push(level);
        }
        Ok(Self { levels })
    }

    /// The MQTT subscription filter: captures become `+`.
    pub fn filter(&self) -> String {
        let parts: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Device | Level::Resource | Level::Any => "+",
                Level::Rest => "#",
            })
            .collect();
        parts.join("/")
    }

    /// Whether the template names the device.
    pub fn has_device(&self) -> bool {
        self.levels.contains(&Level::Device)
    }

    /// Matches a topic; `None` if it does not fit.
    pub fn captures<'a>(&self, topic: &'a str) -> Option<Captures<'a>> {
        let mut out = Captures {
            device: None,
            resource: None,
            rest: "",
        };
        let mut pos = 0;
        for (i, level) in self.levels.iter().enumerate() {
            if let Level::Rest = level {
                out.rest = topic.get(pos..).unwrap_or("");
                return Some(out);
            }
            let rest = topic.get(pos..)?;
            let end = rest.find('/').unwrap_or(rest.len());
            let part = rest.get(..end)?;
            let last = i + 1 == self.levels.len();
            match level {
                Level::Literal(s) if s != part => return None,
                Level::Device if part.is_empty() => return None,
                Level::Device => out.device = Some(part),
                Level::Resource if part.is_empty() => return None,
                Level::Resource => out.resource = Some(part),
                _ => {}
            }
            pos += end;
            if last {
                return (pos == topic.len()).then_some(out);
            }
            // Skip the separator; a topic that ends here is too short.
            if topic.as_bytes().get(pos) != Some(&b'/') {
                // `a/#` also matches `a` (MQTT: '#' includes the parent level).
                return matches!(self.levels.get(i + 1), Some(Level::Rest)).then_some(out);
            }
            pos += 1;
        }
        Some(out)
    }

    /// The topic for `device` and `resource` (a command topic); `+` and `#` levels are
    /// not allowed in a template used this way.
    pub fn render(&self, device: &str, resource: &str) -> String {
        let parts: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Device => device,
                Level::Resource => resource,
                Level::Any | Level::Rest => "_",
            })
            .collect();
        parts.join("/")
    }

    /// Whether [`TopicTemplate::render`] gives a topic one can publish to.
    pub fn is_concrete(&self) -> bool {
        !self.levels.iter().any(|l| matches!(l, Level::Any | Level::Rest))
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Device => "{device}",
                Level::Resource => "{resource}",
                Level::Any => "+",
                Level::Rest => "#",
            })
            .collect();
        f.write_str(&parts.join("/"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_and_capture() {
        let t = TopicTemplate::parse("sensors/{device}/{resource}").unwrap();
        assert_eq!(t.filter(), "sensors/+/+");
        let c = t.captures("sensors/d1/temp").unwrap();
        assert_eq!((c.device, c.resource), (Some("d1"), Some("temp")));
        assert!(t.captures("sensors/d1").is_none());
        assert!(t.captures("sensors/d1/temp/x").is_none());
        assert!(t.captures("other/d1/temp").is_none());
        assert!(t.captures("sensors//temp").is_none());
        assert_eq!(t.render("d1", "led"), "sensors/d1/led");

        let t = TopicTemplate::parse("site/+/{device}/#").unwrap();
        assert_eq!(t.filter(), "site/+/+/#");
        let c = t.captures("site/a/d2/x/y").unwrap();
        assert_eq!((c.device, c.rest), (Some("d2"), "x/y"));
        assert_eq!(t.captures("site/a/d2").unwrap().rest, "");
        assert!(!t.is_concrete());
    }

    #[test]
    fn bad_templates_say_why() {
        for bad in ["", "a/#/b", "a/x+/b", "a/{device}/{device}", "a/{dev}"] {
            assert!(TopicTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
