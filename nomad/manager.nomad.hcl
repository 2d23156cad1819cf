# Productify Manager on Nomad: a horizontally scaled API group and a single
# executor group, both from the same Docker image.
#
#   nomad var put nomad/jobs/manager \
#     db_password=... auth_client_secret=... pocket_id_api_key=...
#   nomad job run nomad/manager.nomad.hcl
#
# Secrets come from Nomad Variables at nomad/jobs/manager, which every task of
# this job may read without an extra policy. Set db_host and pocket_id_host
# with -var. Needs Nomad 1.5 or later (Variables, the "*" datacenter).

variable "image" {
  type        = string
  default     = "productify/manager:1.0.0"
  description = "Docker image of the Manager."
}

variable "db_host" {
  type    = string
  default = "postgres.service.consul"
}

variable "pocket_id_host" {
  type    = string
  default = "https://id.example.com"
}

job "manager" {
  datacenters = ["*"]
  type        = "service"

  group "api" {
    count = 3

    # `nomad job scale manager api N` and the Nomad Autoscaler stay within
    # these bounds; two replicas is the least that survives losing a node.
    scaling {
      enabled = true
      min     = 2
      max     = 10
    }

    network {
      # Nomad picks a host port and Docker maps it to 8080 inside the
      # container, so the daemon keeps its default port and PORT is not set.
      port "http" {
        to = 8080
      }
    }

    service {
      name = "manager-api"
      port = "http"
      tags = ["http"]

      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    # Replace replicas one at a time and only after the new one is healthy;
    # a failed deploy rolls back by itself.
    update {
      max_parallel     = 1
      health_check     = "checks"
      min_healthy_time = "10s"
      healthy_deadline = "3m"
      auto_revert      = true
    }

    task "api" {
      driver = "docker"

      config {
        image = var.image
        args  = ["run"]
        ports = ["http"]
      }

      env {
        MODE               = "api"
        PFY_ENV            = "production"
        DB_HOST            = var.db_host
        DB_SSLMODE         = "require"
        PFY_POCKET_ID_HOST = var.pocket_id_host
      }

      template {
        destination = "secrets/manager.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/manager" }}
          DB_PASSWORD={{ .db_password }}
          AUTH_CLIENT_SECRET={{ .auth_client_secret }}
          PFY_POCKET_ID_API_KEY={{ .pocket_id_api_key }}
          {{- end }}
        EOT
      }

      # In-flight requests are short; 15 s covers them.
      kill_timeout = "15s"

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }

  group "executor" {
    # One executor. A second would only wait as a hot standby behind the
    # database advisory lock, so it adds failover speed, never throughput.
    count = 1

    network {
      # Static, so Prometheus finds the executor at a fixed address.
      port "metrics" {
        static = 9090
        to     = 9090
      }
    }

    service {
      name = "manager-executor-metrics"
      port = "metrics"
      tags = ["prometheus", "metrics"]

      check {
        type     = "http"
        path     = "/metrics"
        interval = "10s"
        timeout  = "2s"
      }
    }

    # Deploys replace the executor one allocation at a time and with no
    # canary, so at most the outgoing and the incoming instance overlap while
    # the old one drains. That keeps the single-executor rule: the database
    # advisory lock lets only one executor be active, and the incoming one
    # waits as a standby until the outgoing one releases the lock on exit.
    update {
      max_parallel     = 1
      canary           = 0
      health_check     = "checks"
      min_healthy_time = "10s"
      healthy_deadline = "3m"
      auto_revert      = true
    }

    task "executor" {
      driver = "docker"

      config {
        image = var.image
        args  = ["run"]
        ports = ["metrics"]
      }

      env {
        MODE                  = "executor"
        PFY_ENV               = "production"
        PFY_CRON_METRICS_PORT = "9090"
        DB_HOST               = var.db_host
        DB_SSLMODE            = "require"
        PFY_POCKET_ID_HOST    = var.pocket_id_host
      }

      template {
        destination = "secrets/manager.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/manager" }}
          DB_PASSWORD={{ .db_password }}
          AUTH_CLIENT_SECRET={{ .auth_client_secret }}
          PFY_POCKET_ID_API_KEY={{ .pocket_id_api_key }}
          {{- end }}
        EOT
      }

      # Longer than the executor's 30 s drain so in-flight callbacks finish.
      # Nomad clients cap this at max_kill_timeout, 30 s by default: raise it
      # in the client configuration, or the drain is cut short.
      kill_timeout = "40s"

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
