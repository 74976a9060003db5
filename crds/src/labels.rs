//! Identity strings shared by operator, agent and chart: label keys, field
//! managers, lease and component names. Never spell them anywhere else.

/// Label the operator puts on a Node: the name of the ResourceProfile that won it.
pub const PROFILE_LABEL: &str = "gogrid.io/profile";
/// Label on every object the operator creates for an InferenceDeployment.
pub const DEPLOYMENT_LABEL: &str = "gogrid.io/deployment";
/// Label that tells a main Service from a preview Service (`main` | `preview`).
pub const SERVICE_ROLE_LABEL: &str = "gogrid.io/service-role";
/// Standard label naming the controller of an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Standard label naming the component of an object.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Standard label naming the application.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Value of [`MANAGED_BY_LABEL`] and [`NAME_LABEL`] on GoGrid objects.
pub const APP: &str = "gogrid";
/// Component value of agent pods.
pub const AGENT_COMPONENT: &str = "agent";

/// The one field manager the operator writes with (server-side apply).
pub const OPERATOR_MANAGER: &str = "gogrid-operator";
/// The field manager each agent writes its GpuNode with.
pub const AGENT_MANAGER: &str = "gogrid-agent";
/// Standard label naming the controller of an EndpointSlice.
pub const ENDPOINTSLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// [`ENDPOINTSLICE_MANAGED_BY_LABEL`] value on slices the operator owns.
pub const ENDPOINTSLICE_MANAGER: &str = "operator.gogrid.io";
/// Name of the coordination.k8s.io Lease that elects the operator leader.
pub const LEASE_NAME: &str = "gogrid-operator";

/// Name of the agent DaemonSet for a profile.
pub fn agent_daemonset_name(profile: &str) -> String {
    format!("gogrid-agent-{profile}")
}

/// Name of the preview Service of a deployment.
pub fn preview_service_name(deployment: &str) -> String {
    format!("{deployment}-preview")
}
