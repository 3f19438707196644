//! Project-scoped resource operations: create a Patient, read by id or version, search.

use serde_json::Value;

use super::capability::{supports, Interaction};
use super::validate_new_patient;
use crate::store::StoredResource;

pub async fn create_patient(
    services: &crate::Services,
    principal: &crate::projects::Principal,
    body: Value,
) -> crate::Result<StoredResource> {
    crate::fhir_server::require_embedded_store(services, &principal.project_id).await?;
    let body = validate_new_patient(body).map_err(crate::Error::Invalid)?;
    let id = uuid::Uuid::new_v4().to_string();
    Ok(services.store.create_resource(&principal.project_id, "Patient", &id, body, crate::time::now_ms()).await?)
}

/// Reads a resource of the caller's project; another project's resource is simply not found.
pub async fn read(
    services: &crate::Services,
    principal: &crate::projects::Principal,
    resource_type: &str,
    id: &str,
) -> crate::Result<StoredResource> {
    crate::fhir_server::require_embedded_store(services, &principal.project_id).await?;
    let not_found = || crate::Error::NotFound(format!("{resource_type}/{id}"));
    if !supports(resource_type, Interaction::Read) {
        return Err(not_found());
    }
    services.store.read_resource(&principal.project_id, resource_type, id).await?.ok_or_else(not_found)
}

/// One version of a resource of the caller's project (`_history/{vid}`).
pub async fn read_version(
    services: &crate::Services,
    principal: &crate::projects::Principal,
    resource_type: &str,
    id: &str,
    version: &str,
) -> crate::Result<StoredResource> {
    crate::fhir_server::require_embedded_store(services, &principal.project_id).await?;
    let not_found = || crate::Error::NotFound(format!("{resource_type}/{id}/_history/{version}"));
    let Ok(version) = version.parse::<i64>() else {
        return Err(not_found());
    };
    if !supports(resource_type, Interaction::Vread) {
        return Err(not_found());
    }
    services.store.read_version(&principal.project_id, resource_type, id, version).await?.ok_or_else(not_found)
}

/// A search of a searchable type (see `capability::RESOURCES`): `(total, page, query)`.
pub async fn search(
    services: &crate::Services,
    principal: &crate::projects::Principal,
    resource_type: &str,
    params: &[(String, String)],
) -> crate::Result<(i64, Vec<StoredResource>, crate::store::sync::ResourceQuery)> {
    crate::fhir_server::require_embedded_store(services, &principal.project_id).await?;
    let query = super::search::parse(resource_type, params).map_err(crate::Error::Invalid)?;
    let (total, found) = services.store.search_resources(&principal.project_id, &query).await?;
    Ok((total, found, query))
}
