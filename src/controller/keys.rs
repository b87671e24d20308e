//! The key the controller's per-object state is kept under: (namespace, name). A leaf module,
//! so that every other one can use it without importing each other.

/// (namespace, name) of an object.
pub type ObjectKey = (String, String);
