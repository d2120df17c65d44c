// A real OpenID provider (panva/oidc-provider) for Coffer's integration tests.
// Usage: node server.mjs <port>   — listens on 127.0.0.1 only, prints "READY <issuer>".
import http from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node server.mjs <port>');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

const key = (type, opts, kid, alg) => ({
  ...generateKeyPairSync(type, opts).privateKey.export({ format: 'jwk' }),
  kid,
  alg,
  use: 'sig',
});

// Audiences the tests ask for, and the algorithm each one's tokens are signed with.
const resources = {
  'https://coffer.test': 'RS256',
  'https://coffer-es.test': 'ES256',
  'https://wrong-audience.test': 'RS256',
};

const client = (id, secret) => ({
  client_id: id,
  client_secret: secret,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'client_secret_post',
});

const provider = new Provider(issuer, {
  clients: [client('coffer-ci', 'coffer-ci-secret'), client('other-client', 'other-secret')],
  jwks: {
    keys: [
      key('rsa', { modulusLength: 2048 }, 'rs-1', 'RS256'),
      key('ec', { namedCurve: 'P-256' }, 'es-1', 'ES256'),
    ],
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://coffer.test',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        const alg = resources[resource];
        if (!alg) throw new errors.InvalidTarget();
        return {
          scope: 'api',
          audience: resource,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg } },
        };
      },
    },
  },
});

const server = http.createServer(provider.callback());
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${issuer}\n`);
});
// Exit with the test harness: when stdin closes or on a signal.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
for (const s of ['SIGTERM', 'SIGINT']) process.on(s, () => process.exit(0));
