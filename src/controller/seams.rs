//! The two seams of a reconcile pass, so that each step can be tested without a network: the AEP
//! calls a step may make ([`AepApi`], implemented by the real [`Session`]) and the status and
//! annotation writes ([`StatusApi`], implemented by `Api<K>`). Only these; everything else a
//! step does is pure.

use futures::future::BoxFuture;
use kube::{
    Api,
    api::{Patch, PatchParams},
};

use crate::aep::{
    CreateAudienceRequest, CreateAudienceResponse, Error, ExtendTtlResponse, ExternalAudience as AepAudience,
    Operation, PatchAudienceRequest, Run, Session, StartRunRequest, UpsAudience,
};

/// The AEP calls of the steps (reference §2).
pub trait AepApi: Send + Sync {
    fn find_audiences_by_name(&self, name: &str) -> impl Future<Output = Result<Vec<UpsAudience>, Error>> + Send;
    fn find_audiences_by_custom_id(&self, id: &str) -> impl Future<Output = Result<Vec<UpsAudience>, Error>> + Send;
    fn create_audience(
        &self,
        req: &CreateAudienceRequest,
    ) -> impl Future<Output = Result<CreateAudienceResponse, Error>> + Send;
    fn get_operation(&self, operation_id: &str) -> impl Future<Output = Result<Operation, Error>> + Send;
    fn get_audience(&self, audience_id: &str) -> impl Future<Output = Result<UpsAudience, Error>> + Send;
    fn patch_audience(
        &self,
        audience_id: &str,
        req: &PatchAudienceRequest,
    ) -> impl Future<Output = Result<AepAudience, Error>> + Send;
    fn start_run(&self, audience_id: &str, req: &StartRunRequest) -> impl Future<Output = Result<Run, Error>> + Send;
    fn get_run(&self, audience_id: &str, run_id: &str) -> impl Future<Output = Result<Run, Error>> + Send;
    fn list_runs(&self, audience_id: &str) -> impl Future<Output = Result<Vec<Run>, Error>> + Send;
    fn delete_audience(&self, audience_id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    fn extend_ttl(&self, audience_id: &str) -> impl Future<Output = Result<ExtendTtlResponse, Error>> + Send;
}

impl AepApi for Session {
    fn find_audiences_by_name(&self, name: &str) -> impl Future<Output = Result<Vec<UpsAudience>, Error>> + Send {
        Session::find_audiences_by_name(self, name)
    }
    fn find_audiences_by_custom_id(&self, id: &str) -> impl Future<Output = Result<Vec<UpsAudience>, Error>> + Send {
        Session::find_audiences_by_custom_id(self, id)
    }
    fn create_audience(
        &self,
        req: &CreateAudienceRequest,
    ) -> impl Future<Output = Result<CreateAudienceResponse, Error>> + Send {
        Session::create_audience(self, req)
    }
    fn get_operation(&self, operation_id: &str) -> impl Future<Output = Result<Operation, Error>> + Send {
        Session::get_operation(self, operation_id)
    }
    fn get_audience(&self, audience_id: &str) -> impl Future<Output = Result<UpsAudience, Error>> + Send {
        Session::get_audience(self, audience_id)
    }
    fn patch_audience(
        &self,
        audience_id: &str,
        req: &PatchAudienceRequest,
    ) -> impl Future<Output = Result<AepAudience, Error>> + Send {
        Session::patch_audience(self, audience_id, req)
    }
    fn start_run(&self, audience_id: &str, req: &StartRunRequest) -> impl Future<Output = Result<Run, Error>> + Send {
        Session::start_run(self, audience_id, req)
    }
    fn get_run(&self, audience_id: &str, run_id: &str) -> impl Future<Output = Result<Run, Error>> + Send {
        Session::get_run(self, audience_id, run_id)
    }
    fn list_runs(&self, audience_id: &str) -> impl Future<Output = Result<Vec<Run>, Error>> + Send {
        Session::list_runs(self, audience_id)
    }
    fn delete_audience(&self, audience_id: &str) -> impl Future<Output = Result<(), Error>> + Send {
        Session::delete_audience(self, audience_id)
    }
    fn extend_ttl(&self, audience_id: &str) -> impl Future<Output = Result<ExtendTtlResponse, Error>> + Send {
        Session::extend_ttl(self, audience_id)
    }
}

/// The status subresource of one kind of object, and the one annotation the controller keeps.
pub trait StatusApi<K>: Send + Sync {
    /// Applies a JSON patch to `/status` of object `name` as field manager `manager`.
    fn patch_status<'a>(
        &'a self,
        name: &'a str,
        manager: &'a str,
        patch: json_patch::Patch,
    ) -> BoxFuture<'a, Result<K, kube::Error>>;

    /// Sets (or, with `None`, removes) annotation `key` of object `name` as field manager
    /// `manager` (a merge patch of that one key).
    fn patch_annotation<'a>(
        &'a self,
        name: &'a str,
        manager: &'a str,
        key: &'a str,
        value: Option<String>,
    ) -> BoxFuture<'a, Result<K, kube::Error>>;
}

impl<K> StatusApi<K> for Api<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    fn patch_status<'a>(
        &'a self,
        name: &'a str,
        manager: &'a str,
        patch: json_patch::Patch,
    ) -> BoxFuture<'a, Result<K, kube::Error>> {
        Box::pin(async move {
            let params = PatchParams {
                field_manager: Some(manager.to_owned()),
                ..PatchParams::default()
            };
            Api::patch_status(self, name, &params, &Patch::Json::<()>(patch)).await
        })
    }

    fn patch_annotation<'a>(
        &'a self,
        name: &'a str,
        manager: &'a str,
        key: &'a str,
        value: Option<String>,
    ) -> BoxFuture<'a, Result<K, kube::Error>> {
        Box::pin(async move {
            let params = PatchParams {
                field_manager: Some(manager.to_owned()),
                ..PatchParams::default()
            };
            let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
            Api::patch(self, name, &params, &Patch::Merge(patch)).await
        })
    }
}
