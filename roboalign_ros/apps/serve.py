"""``roboalign serve``: one checkpoint served to policy_nodes on other machines (no ROS).

    roboalign serve --model runs/policy --bind 127.0.0.1:8765
    roboalign serve --model runs/policy --bind 0.0.0.0:8765 --token-file ~/.roboalign_token

The model is loaded, checked and warmed up once, as policy_node loads it
(:func:`roboalign_ros.serving.load_checked`); a robot's policy_node then runs with
``inference: remote`` and ``server: HOST:PORT`` (docs/serving.md).
"""

from __future__ import annotations

import argparse
import logging


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``roboalign serve``; ``func`` serves until Ctrl-C."""
    ap.add_argument("--model", required=True,
                    help="checkpoint directory (save_pretrained layout) or 'tiny'")
    ap.add_argument("--bind", default="127.0.0.1:8765",
                    help="HOST:PORT (default loopback; any other address needs "
                         "--token-file or mutual TLS)")
    ap.add_argument("--robot", default="sim_arm", help="robot config the model must fit")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--token-file", default=None,
                    help="file holding the token clients must send (16+ characters)")
    ap.add_argument("--tls-cert", default=None, help="server certificate (PEM): wss://")
    ap.add_argument("--tls-key", default=None, help="its private key (PEM)")
    ap.add_argument("--tls-client-ca", default=None,
                    help="CA the clients' certificates must be signed by (mutual TLS)")
    ap.add_argument("--reasoning-every", type=int, default=-1,
                    help="-1: the checkpoint's setting; 0: off; N > 0: on")
    ap.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    ap.set_defaults(func=run_cli)


def run_cli(a: argparse.Namespace) -> int:
    """Check the options, load the model, serve; 2 on a bad option."""
    from roboalign_ros.parameters import node_parameters
    from roboalign_ros.robot import load_robot_config
    from roboalign_ros.serving import input_limits, load_checked
    from roboalign_ros.serving.remote import (
        PolicyServer,
        is_loopback,
        parse_address,
        read_token,
        tls_context,
    )

    logging.basicConfig(level=logging.INFO, format="[serve] %(message)s")
    try:
        host, _ = parse_address(a.bind)
        token = read_token(a.token_file) if a.token_file else None
        context = tls_context(a.tls_cert, a.tls_key, a.tls_client_ca, server=True)
        mutual = bool(a.tls_cert and a.tls_client_ca)
        if not is_loopback(host) and token is None and not mutual:  # before loading a model
            raise ValueError(f"bind: {host} is not loopback: give --token-file or mutual TLS "
                             "(--tls-cert, --tls-key, --tls-client-ca)")
        p = node_parameters("policy_node", overrides={
            "model_path": a.model, "device": a.device, "reasoning_every": a.reasoning_every,
            "torch_threads": a.torch_threads})
    except ValueError as exc:
        print(f"roboalign serve: {exc}")
        return 2
    policy = load_checked(p, load_robot_config(a.robot))
    server = PolicyServer(policy, a.bind, token=token, ssl_context=context, mutual_tls=mutual,
                          limits=input_limits(p))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (``python -m roboalign_ros.apps.serve``)."""
    ap = argparse.ArgumentParser(prog="roboalign serve", description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
