/** `rabbitmq-stream://user:password@host:port/vhost` -> connection parameters of the client. */
export interface StreamEndpoint {
  readonly hostname: string;
  readonly port: number;
  readonly username: string;
  readonly password: string;
  readonly vhost: string;
  readonly tls: boolean;
}

export function parseStreamUrl(url: string): StreamEndpoint {
  const u = new URL(url);
  const tls = u.protocol === 'rabbitmq-stream+tls:';
  if (!tls && u.protocol !== 'rabbitmq-stream:') throw new Error(`not a rabbitmq-stream:// URL: ${u.protocol}`);
  const path = decodeURIComponent(u.pathname.replace(/^\//, ''));
  return {
    hostname: u.hostname.replace(/^\[|\]$/g, '') || 'localhost',
    port: u.port ? Number(u.port) : tls ? 5551 : 5552,
    username: u.username ? decodeURIComponent(u.username) : 'guest',
    password: u.password ? decodeURIComponent(u.password) : 'guest',
    // "/" is the default vhost; "rabbitmq-stream://host:5552/" and ".../%2F" both mean it.
    vhost: path === '' ? '/' : path,
    tls,
  };
}
