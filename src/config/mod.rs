//! Configuration: the serde schema ([`schema`]), human durations and sizes, validation with field
//! paths ([`validate`]) and loading from TOML or JSON text ([`load`]).

pub mod diff;
pub mod duration;
pub mod load;
pub mod schema;
pub mod size;
pub mod validate;
mod validate_tcp;
mod validate_upstream;
pub mod write_back;

pub use duration::Dur;
pub use load::{load_file, parse_config, ConfigError, Format};
pub use schema::*;
pub use validate::{validate, Problem};

/// Renders a configuration as the readable TOML that is written back to disk.
pub fn to_toml(cfg: &Config) -> String {
    toml::to_string_pretty(cfg)
        .unwrap_or_else(|e| format!("# could not render configuration: {e}\n"))
}
