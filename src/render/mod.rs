//! Render HAProxy configs from Tera templates and apply them (placeholder until issue 3 lands:
//! the helper replaces this file).
use serde::Deserialize;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {}
impl ApplyConfig {
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub name: String,
}
impl TemplateConfig {
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
