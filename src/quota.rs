//! Per-tenant quotas on what clients may store: entries and bytes, counted
//! over all of a tenant's namespaces by the store ([`crate::store::Usage`]).
//!
//! A client's batch that would take its tenant past a quota is refused
//! whole with RESOURCE_EXHAUSTED, before anything of it is stored; entries
//! it holds already cost nothing. Entries that arrive from peers are never
//! refused by quota, so the mesh still converges: a tenant can be over its
//! quota on a replica that took them from its peers, and its clients then
//! write nothing more there until it is raised.
//!
//! `[quotas]` sets a default for every tenant and `[[quotas.tenants]]`
//! one per tenant; 0 means no limit. Quotas reload with the access policy.

use std::collections::HashMap;

use crate::store::Usage;

/// One tenant's limits; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub max_entries: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// Every tenant's quota.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotas {
    /// For tenants without a quota of their own.
    pub default: Quota,
    pub tenants: HashMap<String, Quota>,
}

/// A batch that would take a tenant past its quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tenant {tenant} is at its quota of {limit} {what}: it stores {used}, and the batch adds \
     {adding}; nothing of the batch was stored"
)]
pub struct OverQuota {
    pub tenant: String,
    pub what: &'static str,
    pub used: u64,
    pub adding: u64,
    pub limit: u64,
}

impl Quotas {
    pub fn of(&self, tenant: &str) -> Quota {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }

    /// Whether any tenant has a limit (else nothing need be counted).
    pub fn any(&self) -> bool {
        self.default != Quota::default() || self.tenants.values().any(|q| *q != Quota::default())
    }
}

impl Quota {
    /// Whether `tenant`, which stores `used`, may store `adding` more.
    pub fn check(&self, tenant: &str, used: Usage, adding: Usage) -> Result<(), OverQuota> {
        for (what, limit, used, adding) in [
            ("entries", self.max_entries, used.entries, adding.entries),
            ("bytes", self.max_bytes, used.bytes, adding.bytes),
        ] {
            if let Some(limit) = limit
                && used.saturating_add(adding) > limit
            {
                return Err(OverQuota {
                    tenant: tenant.to_owned(),
                    what,
                    used,
                    adding,
                    limit,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_within_the_quota_passes_and_one_past_it_names_what() {
        let quota = Quota {
            max_entries: Some(10),
            max_bytes: Some(1000),
        };
        let used = Usage {
            entries: 8,
            bytes: 800,
        };
        let two = Usage {
            entries: 2,
            bytes: 200,
        };
        assert_eq!(quota.check("t", used, two), Ok(()));
        let three = Usage {
            entries: 3,
            bytes: 100,
        };
        assert_eq!(quota.check("t", used, three).unwrap_err().what, "entries");
        let big = Usage {
            entries: 1,
            bytes: 201,
        };
        let over = quota.check("t", used, big).unwrap_err();
        assert_eq!((over.what, over.used, over.limit), ("bytes", 800, 1000));
        assert_eq!(Quota::default().check("t", used, big), Ok(()));
    }

    #[test]
    fn a_tenant_of_its_own_overrides_the_default() {
        let quotas = Quotas {
            default: Quota {
                max_entries: Some(5),
                max_bytes: None,
            },
            tenants: HashMap::from([("big".to_owned(), Quota::default())]),
        };
        assert!(quotas.any());
        assert_eq!(quotas.of("big"), Quota::default());
        assert_eq!(quotas.of("small").max_entries, Some(5));
        assert!(!Quotas::default().any());
    }
}
