//! The seams of a reconcile pass, so that each step can be tested without a network: the AEP
//! calls a step may make ([`AepApi`] for audiences, [`FlowApi`] for dataflows, both implemented
//! by the real [`Session`]) and the status and
//! annotation writes ([`StatusApi`], implemented by `Api<K>`). Only these; everything else a
//! step does is pure.

use futures::future::BoxFuture;
use kube::{
    Api,
    api::{Patch, PatchParams},
};

use crate::aep::{
    AdhocOrder, CreateAudienceRequest, CreateAudienceResponse, Error, ExtendTtlResponse,
    ExternalAudience as AepAudience, Flow, FlowPatchOp, FlowRun, Operation, PatchAudienceRequest, Run, SegmentJob,
    Session, StartRunRequest, UpsAudience,
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

/// The AEP calls of the AudienceActivation steps: Flow Service dataflows and their runs, the ad
/// hoc activation API, and the segmentation jobs an ExternalAudience reads.
pub trait FlowApi: Send + Sync {
    fn get_flow(&self, flow_id: &str) -> impl Future<Output = Result<Flow, Error>> + Send;
    fn patch_flow(
        &self,
        flow_id: &str,
        etag: &str,
        ops: &[FlowPatchOp],
    ) -> impl Future<Output = Result<Option<String>, Error>> + Send;
    fn list_flow_runs(&self, flow_id: &str) -> impl Future<Output = Result<Vec<FlowRun>, Error>> + Send;
    fn list_audience_flow_runs(
        &self,
        flow_id: &str,
        audience_id: &str,
    ) -> impl Future<Output = Result<Vec<FlowRun>, Error>> + Send;
    fn adhoc_run(
        &self,
        flow_id: &str,
        audience_ids: &[String],
    ) -> impl Future<Output = Result<Vec<AdhocOrder>, Error>> + Send;
    fn list_segment_jobs(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<SegmentJob>, Error>> + Send;
}

impl FlowApi for Session {
    fn get_flow(&self, flow_id: &str) -> impl Future<Output = Result<Flow, Error>> + Send {
        Session::get_flow(self, flow_id)
    }
    fn patch_flow(
        &self,
        flow_id: &str,
        etag: &str,
        ops: &[FlowPatchOp],
    ) -> impl Future<Output = Result<Option<String>, Error>> + Send {
        Session::patch_flow(self, flow_id, etag, ops)
    }
    fn list_flow_runs(&self, flow_id: &str) -> impl Future<Output = Result<Vec<FlowRun>, Error>> + Send {
        Session::list_flow_runs(self, flow_id)
    }
    fn list_audience_flow_runs(
        &self,
        flow_id: &str,
        audience_id: &str,
    ) -> impl Future<Output = Result<Vec<FlowRun>, Error>> + Send {
        Session::list_audience_flow_runs(self, flow_id, audience_id)
    }
    fn adhoc_run(
        &self,
        flow_id: &str,
        audience_ids: &[String],
    ) -> impl Future<Output = Result<Vec<AdhocOrder>, Error>> + Send {
        Session::adhoc_run(self, flow_id, audience_ids)
    }
    fn list_segment_jobs(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<SegmentJob>, Error>> + Send {
        Session::list_segment_jobs(self, status, limit)
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
