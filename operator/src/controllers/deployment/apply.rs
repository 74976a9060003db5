//! Writes the deployment's Services, EndpointSlices and ServiceMonitor when they
//! differ from the desired ones, and removes those no longer wanted.

use std::sync::Arc;

use gogrid_crds::InferenceDeployment;
use gogrid_crds::labels::{
    DEPLOYMENT_LABEL, ENDPOINTSLICE_MANAGED_BY_LABEL, ENDPOINTSLICE_MANAGER,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::CONTROLLER;
use super::build::{self, Role};
use crate::context::Context;
use crate::{Error, Result, apply as ssa};

/// The children a deployment should have.
#[derive(Clone, Debug)]
pub struct Children {
    /// Services by role; roles absent here are deleted.
    pub services: Vec<(Role, Service)>,
    /// Every EndpointSlice of every wanted Service.
    pub slices: Vec<EndpointSlice>,
    /// The ServiceMonitor, when the spec asks for one.
    pub service_monitor: Option<DynamicObject>,
}

/// Bring the children in line; returns the number of writes sent.
pub async fn apply(
    ctx: &Context,
    infd: &InferenceDeployment,
    children: &Children,
) -> Result<usize> {
    let ns = infd.namespace().unwrap_or_default();
    let name = infd.name_any();
    let mut writes = 0;

    // What exists is read from the operator's caches of its children: a
    // child that changed since is a watch event that reconciles again.
    let stores = ctx.stores();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    for role in [Role::Main, Role::Preview] {
        let existing = stores
            .services
            .get(&ObjectRef::new(&role.service_name(&name)).within(&ns));
        let existing = existing.as_deref();
        match children.services.iter().find(|(r, _)| *r == role) {
            Some((_, desired)) => {
                if ssa::apply(&services, desired, existing).await? {
                    ctx.metrics.write(CONTROLLER, "Service");
                    writes += 1;
                }
            }
            None => {
                // Only remove what this operator made.
                let ours =
                    existing.is_some_and(|s| s.labels().get(DEPLOYMENT_LABEL) == Some(&name));
                if ours && ssa::delete_if_present(&services, existing).await? {
                    ctx.metrics.write(CONTROLLER, "Service");
                    writes += 1;
                }
            }
        }
    }

    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let existing: Vec<Arc<EndpointSlice>> = stores
        .slices
        .state()
        .into_iter()
        .filter(|e| e.namespace().as_deref() == Some(ns.as_str()))
        .filter(|e| {
            let labels = e.labels();
            labels.get(DEPLOYMENT_LABEL) == Some(&name)
                && labels
                    .get(ENDPOINTSLICE_MANAGED_BY_LABEL)
                    .map(String::as_str)
                    == Some(ENDPOINTSLICE_MANAGER)
        })
        .collect();
    for desired in &children.slices {
        let current = existing
            .iter()
            .find(|e| e.metadata.name == desired.metadata.name)
            .map(|e| e.as_ref());
        if ssa::apply(&slices, desired, current).await? {
            ctx.metrics.write(CONTROLLER, "EndpointSlice");
            writes += 1;
        }
    }
    for surplus in existing.iter().filter(|e| {
        !children
            .slices
            .iter()
            .any(|d| d.metadata.name == e.metadata.name)
    }) {
        if ssa::delete_if_present(&slices, Some(surplus.as_ref())).await? {
            ctx.metrics.write(CONTROLLER, "EndpointSlice");
            writes += 1;
        }
    }

    let served = ctx
        .service_monitor_served()
        .await
        .map_err(Error::kube("discovering monitoring.coreos.com".to_owned()))?;
    if served {
        let resource = build::service_monitor_resource();
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &resource);
        let existing = match stores.service_monitors.filled(&resource) {
            Some(cache) => cache
                .get(&ObjectRef::new_with(&name, resource.clone()).within(&ns))
                .map(|m| (*m).clone()),
            None => ssa::get_opt(&api, &name).await?,
        };
        let changed = match &children.service_monitor {
            Some(desired) => ssa::apply(&api, desired, existing.as_ref()).await?,
            None => ssa::delete_if_present(&api, existing.as_ref()).await?,
        };
        if changed {
            ctx.metrics.write(CONTROLLER, "ServiceMonitor");
            writes += 1;
        }
    }
    Ok(writes)
}
