//! OpenAPI links: how the answer of one operation names the resource of the next (a new
//! project's name is the `{project}` of its routes, a written parameter can be read, its
//! history listed, rolled back and deleted). Clients and generators such as schemathesis
//! follow them to reach real resources instead of guessing names.

use utoipa::Modify;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::{OpenApi, RefOr};

pub(crate) struct Links;

/// Parameter values: a runtime expression, or a constant.
const NEW_PROJECT: &str = "$response.body#/name";
const SAME_PROJECT: &str = "$request.path.project";
const SAME_ENV: &str = "$request.path.env";
const SAME_NAME: &str = "$request.path.name";
/// Every project starts with this environment.
const DEFAULT_ENV: &str = "default";

type Link = (&'static str, &'static [(&'static str, &'static str)]);

/// (method, path, status) of the source answer, and its links: (target operationId,
/// parameters).
const LINKS: &[(&str, &str, &str, &[Link])] = &[
    (
        "post",
        "/v1/projects",
        "201",
        &[
            ("list_envs", &[("project", NEW_PROJECT)]),
            ("create_env", &[("project", NEW_PROJECT)]),
            (
                "list_params",
                &[("project", NEW_PROJECT), ("env", DEFAULT_ENV)],
            ),
            (
                "set",
                &[
                    ("project", NEW_PROJECT),
                    ("env", DEFAULT_ENV),
                    ("name", "CONTRACT_PARAM"),
                ],
            ),
            (
                "diff",
                &[
                    ("project", NEW_PROJECT),
                    ("a", DEFAULT_ENV),
                    ("b", DEFAULT_ENV),
                ],
            ),
        ],
    ),
    (
        "post",
        "/v1/projects/{project}/envs",
        "201",
        &[(
            "list_params",
            &[("project", SAME_PROJECT), ("env", "$response.body#/name")],
        )],
    ),
    (
        "put",
        "/v1/projects/{project}/envs/{env}/params/{name}",
        "200",
        &[
            ("get", PARAM),
            ("history", PARAM),
            ("rollback", PARAM),
            ("delete_param", PARAM),
        ],
    ),
    (
        "post",
        "/v1/org/api-keys",
        "201",
        &[("revoke", &[("id", "$response.body#/api_key/id")])],
    ),
    (
        "put",
        "/v1/org/members/{username}",
        "204",
        &[("remove", &[("username", "$request.path.username")])],
    ),
];

const PARAM: &[(&str, &str)] = &[
    ("project", SAME_PROJECT),
    ("env", SAME_ENV),
    ("name", SAME_NAME),
];

impl Modify for Links {
    fn modify(&self, openapi: &mut OpenApi) {
        for (method, path, status, links) in LINKS {
            let Some(item) = openapi.paths.paths.get_mut(*path) else {
                continue;
            };
            let op = match *method {
                "post" => item.post.as_mut(),
                "put" => item.put.as_mut(),
                _ => None,
            };
            let Some(RefOr::T(response)) =
                op.and_then(|op| op.responses.responses.get_mut(*status))
            else {
                continue;
            };
            for (target, params) in *links {
                let link = params.iter().fold(
                    LinkBuilder::new().operation_id(*target),
                    |b, (name, value)| b.parameter(*name, *value),
                );
                response
                    .links
                    .insert((*target).to_owned(), RefOr::T(link.build()));
            }
        }
    }
}
