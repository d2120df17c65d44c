pub mod audit;
pub mod auth;
pub mod params;
pub mod projects;
pub mod sys;
