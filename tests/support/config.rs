//! The one way tests write a proxy config: a builder that starts from a config
//! fit for tests (loopback port 0 listeners, the control socket and state file
//! in the test's directory, a short drain quiet period) and takes the slots and
//! whatever keys a test changes. It renders TOML text, so every test goes
//! through the same parser and validation as an operator's file.

use std::path::{Path, PathBuf};

use mcpflip::config::Config;

/// A TOML config under construction for one test directory.
#[derive(Clone, Debug)]
pub struct TestConfig {
    dir: PathBuf,
    /// `[section]` tables in order, each with its `key = value` lines (raw TOML values).
    sections: Vec<(String, Vec<(String, String)>)>,
    slots: Vec<SlotSpec>,
}

#[derive(Clone, Debug)]
struct SlotSpec {
    name: String,
    upstream: String,
    weight: Option<u32>,
    ca: Option<PathBuf>,
    /// More `key = value` lines (raw TOML values).
    extra: Vec<(String, String)>,
}

/// A TOML string value, quoted and escaped.
pub fn q(s: impl AsRef<str>) -> String {
    toml::Value::String(s.as_ref().to_owned()).to_string()
}

impl TestConfig {
    /// Listeners on 127.0.0.1 port 0, `dir/control.sock`, `dir/state.json`,
    /// `[drain] quiet = "50ms"`, `[proxy] workers = 2` (the per-core workers
    /// with a connection hand-off, whatever the machine's cores: a many-core
    /// CI machine would otherwise start a thread per core for every proxy a
    /// test starts), and no slot yet.
    pub fn new(dir: &Path) -> Self {
        TestConfig {
            dir: dir.to_path_buf(),
            sections: Vec::new(),
            slots: Vec::new(),
        }
        .set("listen", "addr", q("127.0.0.1:0"))
        .set("admin", "addr", q("127.0.0.1:0"))
        .set(
            "control",
            "socket",
            q(dir.join("control.sock").display().to_string()),
        )
        .set(
            "control",
            "state_file",
            q(dir.join("state.json").display().to_string()),
        )
        .set("drain", "quiet", q("50ms"))
        .set("proxy", "workers", "2")
    }

    /// Blue (weight 100) and green (weight 0) on loopback ports.
    pub fn blue_green(dir: &Path, blue: u16, green: u16) -> Self {
        Self::new(dir)
            .slot("blue", blue, 100)
            .slot("green", green, 0)
    }

    /// Sets `key = value` in `[section]` (`value` is raw TOML: use [`q`] for strings).
    pub fn set(mut self, section: &str, key: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        let lines = match self.sections.iter_mut().find(|(s, _)| s == section) {
            Some((_, lines)) => lines,
            None => {
                self.sections.push((section.to_owned(), Vec::new()));
                &mut self.sections.last_mut().expect("just pushed").1
            }
        };
        match lines.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => lines.push((key.to_owned(), value)),
        }
        self
    }

    /// Removes `key` from `[section]` (the proxy's default applies).
    pub fn unset(mut self, section: &str, key: &str) -> Self {
        if let Some((_, lines)) = self.sections.iter_mut().find(|(s, _)| s == section) {
            lines.retain(|(k, _)| k != key);
        }
        self
    }

    /// Sets a string key.
    pub fn set_str(self, section: &str, key: &str, value: impl AsRef<str>) -> Self {
        self.set(section, key, q(value))
    }

    /// `[probe] expect_tools` = every tool of the built-in server.
    pub fn expect_all_tools(self) -> Self {
        self.set(
            "probe",
            "expect_tools",
            r#"["get_document", "list_documents", "search_documents", "slow", "whoami"]"#,
        )
    }

    /// The public listener on `127.0.0.1:port`.
    pub fn listen_port(self, port: u16) -> Self {
        self.set_str("listen", "addr", format!("127.0.0.1:{port}"))
    }

    /// `[listen] tls` with this certificate and key.
    pub fn tls(self, cert: &Path, key: &Path) -> Self {
        let v = format!(
            "{{ cert = {}, key = {} }}",
            q(cert.display().to_string()),
            q(key.display().to_string())
        );
        self.set("listen", "tls", v)
    }

    /// A slot served by a loopback port.
    pub fn slot(self, name: &str, port: u16, weight: u32) -> Self {
        self.slot_url(
            name,
            &format!("http://127.0.0.1:{port}"),
            Some(weight),
            None,
        )
    }

    /// A slot with any upstream URL, an optional weight (absent: the default)
    /// and an optional `ca` file.
    pub fn slot_url(
        mut self,
        name: &str,
        url: &str,
        weight: Option<u32>,
        ca: Option<&Path>,
    ) -> Self {
        self.slots.push(SlotSpec {
            name: name.to_owned(),
            upstream: url.to_owned(),
            weight,
            ca: ca.map(Path::to_path_buf),
            extra: Vec::new(),
        });
        self
    }

    /// Sets `key = value` in slot `name`'s table (`value` is raw TOML).
    pub fn slot_set(mut self, name: &str, key: &str, value: impl Into<String>) -> Self {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no slot {name} in the test config"));
        slot.extra.push((key.to_owned(), value.into()));
        self
    }

    /// Drops every slot (to list them again, e.g. before a reload).
    pub fn clear_slots(mut self) -> Self {
        self.slots.clear();
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where [`TestConfig::write`] puts the file.
    pub fn path(&self) -> PathBuf {
        self.dir.join("mcpflip.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (section, lines) in &self.sections {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in lines {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        for s in &self.slots {
            out.push_str(&format!(
                "[[slot]]\nname = {}\nupstream = {}\n",
                q(&s.name),
                q(&s.upstream)
            ));
            if let Some(w) = s.weight {
                out.push_str(&format!("weight = {w}\n"));
            }
            if let Some(ca) = &s.ca {
                out.push_str(&format!("ca = {}\n", q(ca.display().to_string())));
            }
            for (k, v) in &s.extra {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }

    /// Writes the file (replacing it) and returns its path.
    pub fn write(&self) -> PathBuf {
        let p = self.path();
        std::fs::write(&p, self.text()).expect("write the test config");
        p
    }

    /// Writes the file and loads it as the proxy would.
    pub fn load(&self) -> Config {
        let p = self.write();
        Config::load(&p).unwrap_or_else(|e| panic!("invalid test config: {e}\n{}", self.text()))
    }
}
