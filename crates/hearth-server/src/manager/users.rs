//! Users: the first-start admin, adding and removing users, who a caller is.

use super::*;
use crate::auth::{self, FIRST_ADMIN};
use crate::db::{Removal, UserRecord};
use hearth_api::{CreateUser, NewUser, User};

fn user(r: UserRecord) -> User {
    User {
        name: r.name,
        admin: r.admin,
        created_at: r.created_at,
    }
}

impl Manager {
    /// Makes the token of the data dir's token file the first-start admin's, at every
    /// start: a data dir from before users keeps its token, and deleting the file (a new
    /// one is made) rotates it.
    pub async fn ensure_first_admin(&self, token: &str) -> Result<(), ApiError> {
        let res = self
            .store
            .upsert_admin(FIRST_ADMIN, &auth::token_hash(token))
            .await;
        self.tokens.invalidate();
        res?;
        Ok(())
    }

    /// The caller a bearer token belongs to, if any: what the API's token check, the port
    /// proxy's token or cookie check and anything else taking an API token use.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Caller>, ApiError> {
        let hash = auth::token_hash(token);
        if let Some(c) = self.tokens.get(&hash) {
            return Ok(Some(c));
        }
        let generation = self.tokens.generation();
        let Some(u) = self.store.user_by_token_hash(&hash).await? else {
            return Ok(None);
        };
        let caller = Caller {
            id: u.name.into(),
            admin: u.admin,
        };
        self.tokens.insert(generation, hash, caller.clone());
        Ok(Some(caller))
    }

    /// The caller for user `name` as it stands now (admin flag included), or `None` once
    /// removed: for callers identified otherwise than by token (an SSH key's owner).
    pub async fn caller(&self, name: &str) -> Result<Option<Caller>, ApiError> {
        Ok(self.store.user(name).await?.map(|u| Caller {
            id: u.name.into(),
            admin: u.admin,
        }))
    }

    pub async fn me(&self, caller: &Caller) -> Result<User, ApiError> {
        match self.store.user(&caller.id).await? {
            Some(u) => Ok(user(u)),
            // Removed between the token check and here.
            None => Err(ApiError::unauthorized("invalid token")),
        }
    }

    pub async fn users(&self) -> Result<Vec<User>, ApiError> {
        Ok(self.store.users().await?.into_iter().map(user).collect())
    }

    /// Adds a user with a fresh token, which is answered this once.
    pub async fn create_user(&self, req: CreateUser) -> Result<NewUser, ApiError> {
        if !auth::is_valid_user_name(&req.name) {
            return Err(ApiError::invalid(auth::invalid_user_name_message(
                &req.name,
            )));
        }
        let token = auth::new_token();
        let rec = self
            .store
            .insert_user(&req.name, req.admin, &auth::token_hash(&token))
            .await
            .map_err(|e| match e {
                crate::db::StoreError::UserTaken(n) => ApiError::conflict(format!(
                    "user {n} already exists (hearth user ls lists users)"
                )),
                other => other.into(),
            })?;
        tracing::info!(user = rec.name, admin = rec.admin, "user added");
        Ok(NewUser {
            user: user(rec),
            token,
        })
    }

    /// Makes `name` an admin or a plain user (with an identity provider, users are made
    /// plain at their first sign-in: this is how one becomes an admin). Callers cannot
    /// change their own role, nor the first-start admin's, so an admin always remains.
    pub async fn set_admin(
        &self,
        caller: &Caller,
        name: &str,
        admin: bool,
    ) -> Result<User, ApiError> {
        if !auth::is_valid_user_name(name) {
            return Err(ApiError::invalid(auth::invalid_user_name_message(name)));
        }
        if *caller.id == *name {
            return Err(ApiError::conflict(format!(
                "cannot change the role of user {name}: it is you (ask another admin)"
            )));
        }
        if name == FIRST_ADMIN {
            return Err(ApiError::conflict(format!(
                "user {FIRST_ADMIN} is always an admin: its token is the server's token file"
            )));
        }
        let res = self.store.set_user_admin(name, admin).await;
        // Cached callers carry the admin flag: they must not keep the old one.
        self.tokens.invalidate();
        let Some(rec) = res? else {
            return Err(ApiError::not_found(format!(
                "user {name} not found (hearth user ls lists users)"
            )));
        };
        tracing::info!(user = name, admin, "user's role changed");
        Ok(user(rec))
    }

    /// Removes `name`'s builder workspace (their podman cache) ahead of removing them, when
    /// the removal can go on: it is no workspace of theirs to keep or hand to an heir.
    async fn remove_builder_of(&self, name: &str, reassigning: bool) -> Result<(), ApiError> {
        let builder = format!("{}{name}", build::BUILDER_PREFIX);
        let recs = self.store.list().await?;
        let owns = |r: &&WorkspaceRecord| *r.owner == *name;
        if !recs.iter().filter(owns).any(|r| r.spec.name == builder) {
            return Ok(());
        }
        let others = recs
            .iter()
            .filter(owns)
            .filter(|r| r.spec.name != builder)
            .count();
        if others > 0 && !reassigning {
            // The removal is refused for those; the builder stays with them.
            return Ok(());
        }
        let owner = Caller {
            id: name.into(),
            admin: false,
        };
        // Not purged: a node without a snapshot store refuses that, and a builder with
        // snapshots (periodic ones) keeps them only for the grace period.
        self.remove(&owner, &builder, false).await?;
        tracing::info!(user = name, builder, "removed the user's builder workspace");
        Ok(())
    }

    /// Removes a user, whose token stops working at once. While it owns workspaces it is
    /// refused (409) unless `reassign_to` names the user to hand them to. Callers cannot
    /// remove themselves, nor the first-start admin (the token file's user), so an admin
    /// always remains.
    pub async fn remove_user(
        &self,
        caller: &Caller,
        name: &str,
        reassign_to: Option<&str>,
    ) -> Result<(), ApiError> {
        for n in std::iter::once(name).chain(reassign_to) {
            if !auth::is_valid_user_name(n) {
                return Err(ApiError::invalid(auth::invalid_user_name_message(n)));
            }
        }
        if *caller.id == *name {
            return Err(ApiError::conflict(format!(
                "cannot remove user {name}: it is you (ask another admin)"
            )));
        }
        if name == FIRST_ADMIN {
            return Err(ApiError::conflict(format!(
                "cannot remove user {FIRST_ADMIN}: its token is the server's token file \
                 (delete that file and restart the server to change the token)"
            )));
        }
        if reassign_to == Some(name) {
            return Err(ApiError::conflict(format!(
                "cannot hand user {name}'s workspaces to {name} itself: name another user"
            )));
        }
        self.remove_builder_of(name, reassign_to.is_some()).await?;
        let res = self.store.delete_user(name, reassign_to).await;
        // Emptied whatever happened: a removed user's token must not live on in it.
        self.tokens.invalidate();
        match res? {
            Removal::Removed => {
                tracing::info!(user = name, reassigned_to = reassign_to, "user removed");
                Ok(())
            }
            Removal::NoSuchUser => Err(ApiError::not_found(format!(
                "user {name} not found (hearth user ls lists users)"
            ))),
            Removal::NoSuchHeir => Err(ApiError::not_found(format!(
                "user {} not found, so it cannot take {name}'s workspaces",
                reassign_to.unwrap_or_default()
            ))),
            Removal::Owns(n) => Err(ApiError::conflict(format!(
                "user {name} still owns {n} workspace(s): remove them, or pass \
                 --reassign-to USER (reassign_to=USER) to hand them over"
            ))),
        }
    }
}
