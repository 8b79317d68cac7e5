//! Editing a document by path, the way the `doc set` and `doc edit`
//! commands (and an app that thinks in JSON) do: a path names map keys and
//! list indexes joined by dots (`items.0.title`); values are JSON, made
//! into Automerge maps, lists and scalars.

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, Prop, ROOT, ReadDoc, ScalarValue};
use serde_json::Value;

use crate::docs::Document;

/// An edit that cannot be made, and where.
#[derive(Debug, thiserror::Error)]
#[error("cannot edit {path:?}: {why}")]
pub struct EditError {
    pub path: String,
    pub why: String,
}

impl EditError {
    fn new(path: &str, why: &str) -> Self {
        Self {
            path: path.to_owned(),
            why: why.to_owned(),
        }
    }
}

/// One edit of a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// Sets the path to the value (an index one past a list's end appends).
    Set(String, Value),
    /// Inserts the value into a list before the index the path ends in (one
    /// past the end appends).
    Insert(String, Value),
    /// Removes a map key or a list element.
    Delete(String),
}

impl Edit {
    /// Makes the edit in `doc` (not yet committed).
    pub fn apply(&self, doc: &mut Document) -> Result<(), EditError> {
        match self {
            Edit::Set(path, value) => set_path(doc, path, value),
            Edit::Insert(path, value) => {
                at_path(doc, path, Missing::Fail, |d, obj, prop, bad| match prop {
                    Prop::Seq(i) if i <= d.length(&obj) => insert_json(d, &obj, i, value),
                    _ => Err(bad("not a list index")),
                })
            }
            Edit::Delete(path) => at_path(doc, path, Missing::Fail, |d, obj, prop, bad| {
                let exists = d.get(&obj, prop.clone()).map_err(|e| bad(&e.to_string()))?;
                match exists {
                    Some(_) => d.delete(&obj, prop).map_err(|e| bad(&e.to_string())),
                    None => Err(bad("nothing there")),
                }
            }),
        }
    }
}

/// What walking a path does where a map on the way is missing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    Make,
    Fail,
}

/// Walks to the object that holds the last part of `path` and hands it,
/// with that part as a property, to `f`.
fn at_path(
    doc: &mut Document,
    path: &str,
    missing: Missing,
    f: impl FnOnce(
        &mut automerge::AutoCommit,
        ObjId,
        Prop,
        &dyn Fn(&str) -> EditError,
    ) -> Result<(), EditError>,
) -> Result<(), EditError> {
    let bad = |why: &str| EditError::new(path, why);
    let parts: Vec<&str> = path.split('.').collect();
    let (last, walk) = parts.split_last().ok_or_else(|| bad("empty path"))?;
    let d = doc.doc_mut();
    let mut obj = ROOT;
    for part in walk {
        let prop = prop_in(d, &obj, part).ok_or_else(|| bad("no such list index"))?;
        obj = match d.get(&obj, prop.clone()).map_err(|e| bad(&e.to_string()))? {
            Some((automerge::Value::Object(_), id)) => id,
            Some(_) => return Err(bad("a value on the way is not a map or list")),
            None if missing == Missing::Make => d
                .put_object(&obj, prop, ObjType::Map)
                .map_err(|e| bad(&e.to_string()))?,
            None => return Err(bad("no such path")),
        };
    }
    let prop = prop_in(d, &obj, last).ok_or_else(|| bad("not a list index"))?;
    f(d, obj, prop, &bad)
}

/// Inserts a JSON value into a list at `index`.
fn insert_json(
    doc: &mut automerge::AutoCommit,
    list: &ObjId,
    index: usize,
    value: &Value,
) -> Result<(), EditError> {
    let bad = |e: automerge::AutomergeError| EditError::new(&index.to_string(), &e.to_string());
    match scalar(value) {
        Some(v) => doc.insert(list, index, v).map_err(bad),
        None => {
            // Make room, then fill it as a put at one past the end would.
            let kind = match value {
                Value::Array(_) => ObjType::List,
                _ => ObjType::Map,
            };
            let child = doc.insert_object(list, index, kind).map_err(bad)?;
            fill(doc, &child, value)
        }
    }
}

/// Sets `path` (`a.b.0.c`: map keys and list indexes) in `doc` to `value`,
/// making missing maps on the way.
pub fn set_path(doc: &mut Document, path: &str, value: &Value) -> Result<(), EditError> {
    at_path(doc, path, Missing::Make, |d, obj, prop, bad| {
        put_json(d, &obj, prop, value).map_err(|e| bad(&e.why))
    })
}

/// The property `part` names in `obj`: a list index in a list, else a key.
fn prop_in(doc: &automerge::AutoCommit, obj: &ObjId, part: &str) -> Option<Prop> {
    match doc.object_type(obj) {
        Ok(ObjType::List | ObjType::Text) => part.parse::<usize>().ok().map(Prop::Seq),
        _ => Some(Prop::Map(part.to_owned())),
    }
}

fn scalar(value: &Value) -> Option<ScalarValue> {
    Some(match value {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int(i),
            None => ScalarValue::F64(n.as_f64()?),
        },
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        Value::Array(_) | Value::Object(_) => return None,
    })
}

/// Puts a JSON value at `prop` of `obj`: scalars as scalars, arrays as
/// lists, objects as maps. A list index one past the end appends.
pub(crate) fn put_json(
    doc: &mut automerge::AutoCommit,
    obj: &ObjId,
    prop: Prop,
    value: &Value,
) -> Result<(), EditError> {
    let bad = |e: automerge::AutomergeError| EditError::new(&format!("{prop:?}"), &e.to_string());
    let append = match &prop {
        Prop::Seq(i) => *i == doc.length(obj),
        Prop::Map(_) => false,
    };
    let kind = match value {
        Value::Array(_) => Some(ObjType::List),
        Value::Object(_) => Some(ObjType::Map),
        _ => None,
    };
    let child = match (kind, &prop, append) {
        (None, Prop::Seq(i), true) => {
            doc.insert(obj, *i, scalar(value).expect("a scalar"))
                .map_err(bad)?;
            return Ok(());
        }
        (None, _, _) => {
            doc.put(obj, prop.clone(), scalar(value).expect("a scalar"))
                .map_err(bad)?;
            return Ok(());
        }
        (Some(kind), Prop::Seq(i), true) => doc.insert_object(obj, *i, kind).map_err(bad)?,
        (Some(kind), _, _) => doc.put_object(obj, prop.clone(), kind).map_err(bad)?,
    };
    fill(doc, &child, value)
}

/// Puts the items or fields of a JSON array or object into a new, empty
/// list or map.
fn fill(doc: &mut automerge::AutoCommit, child: &ObjId, value: &Value) -> Result<(), EditError> {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                put_json(doc, child, Prop::Seq(i), item)?;
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                put_json(doc, child, key.as_str().into(), item)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use automerge::ActorId;
    use serde_json::json;

    use super::*;
    use crate::entry::Namespace;

    fn doc(initial: Value) -> Document {
        let ns = Namespace::new("acme", "notes").unwrap();
        let mut doc = Document::create(ns, ActorId::random());
        for (k, v) in initial.as_object().unwrap() {
            put_json(doc.doc_mut(), &ROOT, k.as_str().into(), v).unwrap();
        }
        doc
    }

    #[test]
    fn set_insert_and_delete_by_path() {
        let mut d = doc(json!({"items": ["a", "c"], "meta": {"n": 1, "gone": true}}));
        for edit in [
            Edit::Insert("items.1".into(), json!("b")),
            Edit::Insert("items.0".into(), json!({"first": [1]})),
            Edit::Insert("items.4".into(), json!("end")),
            Edit::Set("meta.n".into(), json!(2)),
            Edit::Set("meta.deep.x".into(), json!(null)),
            Edit::Delete("meta.gone".into()),
            Edit::Delete("items.2".into()),
        ] {
            edit.apply(&mut d).unwrap();
        }
        assert_eq!(
            d.to_json(),
            json!({"items": [{"first": [1]}, "a", "c", "end"], "meta": {"n": 2, "deep": {"x": null}}})
        );
        for (edit, why) in [
            (Edit::Insert("items.9".into(), json!(1)), "not a list index"),
            (Edit::Insert("meta.n".into(), json!(1)), "not a list index"),
            (Edit::Delete("meta.none".into()), "nothing there"),
            (Edit::Delete("nope.x".into()), "no such path"),
            (Edit::Set("items.7".into(), json!(1)), ""),
        ] {
            let err = edit.apply(&mut d).unwrap_err();
            assert!(err.why.contains(why), "{edit:?}: {err}");
        }
    }
}
