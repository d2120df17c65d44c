pub mod apikeys;
pub mod audit;
pub mod auth;
pub mod keys;
pub mod orgs;
pub mod params;
pub mod projects;
pub mod sys;
