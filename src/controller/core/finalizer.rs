//! The finalizer around a kind's apply and cleanup (kube-runtime's `finalizer` helper: both arms
//! idempotent, the finalizer added before the first apply and removed only when cleanup returns
//! `Ok`). Also says whether this call completed a cleanup, so that the kind can do what must
//! follow its object's release.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use kube::{
    Api,
    runtime::{
        controller::Action,
        finalizer::{Event, finalizer},
    },
};

use super::{Managed, error::Error};

/// Runs `apply` or `cleanup` for `obj` behind finalizer `name`; returns the result and whether a
/// cleanup completed (the finalizer is then gone).
pub async fn with_finalizer<K, A, AF, C, CF>(
    api: &Api<K>,
    name: &str,
    obj: Arc<K>,
    apply: A,
    cleanup: C,
) -> (Result<Action, Error>, bool)
where
    K: Managed,
    A: FnOnce(Arc<K>) -> AF,
    AF: Future<Output = Result<Action, Error>>,
    C: FnOnce(Arc<K>) -> CF,
    CF: Future<Output = Result<Action, Error>>,
{
    let cleaned_up = AtomicBool::new(false);
    let result = finalizer(api, name, obj, |event| async {
        match event {
            Event::Apply(obj) => apply(obj).await,
            Event::Cleanup(obj) => {
                let done = cleanup(obj).await;
                cleaned_up.store(done.is_ok(), Ordering::Relaxed);
                done
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let cleaned = result.is_ok() && cleaned_up.load(Ordering::Relaxed);
    (result, cleaned)
}
