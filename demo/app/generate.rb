#!/usr/bin/env ruby
# frozen_string_literal: true

# generate.rb writes a "fat" Rails 7.2 application for the snapboot demo: an
# app that takes long to boot (eager loading thousands of models, parsing
# hundreds of YAML files, drawing thousands of routes) and talks to
# PostgreSQL through Debian's packaged gems (no Bundler, no Gemfile).
#
#   ruby generate.rb [--models N] --out DIR [--force]
#
# Everything is derived from N (default 1500: about 21 s from `ctr run` to
# the first HTTP 200 on a 2-core VM; 200 boots in about 6 s) and is
# deterministic: the same N gives the same files, byte for byte. Needs only
# Ruby >= 3.0 and its standard library, so it runs on the host or inside the
# image's rootfs (chroot ROOTFS ruby ...).
#
# What N drives (see `counts` below):
#   N models                      app/models/domain_NNN/modelNNNNN.rb, 100 per namespace
#   N/8 settings YAML files       config/settings/domain_NNN/part_NNNNN.yml, parsed at boot
#   one initializer per namespace config/initializers/settings_domain_NNN.rb
#   one locale file per namespace config/locales/domain_NNN.en.yml (I18n eager load)
#   one controller per namespace  app/controllers/domain_NNN/records_controller.rb
#   3 routes per model            config/routes/domain_NNN.rb

require "fileutils"
require "optparse"

module DemoGen
  DEFAULT_MODELS = 1500
  MODELS_PER_NAMESPACE = 100
  MODELS_PER_SETTINGS_FILE = 8

  module_function

  def counts(n)
    namespaces = (n + MODELS_PER_NAMESPACE - 1) / MODELS_PER_NAMESPACE
    {
      models: n,
      namespaces: namespaces,
      settings_files: (n + MODELS_PER_SETTINGS_FILE - 1) / MODELS_PER_SETTINGS_FILE,
      initializers: namespaces,
      locale_files: namespaces,
      controllers: namespaces,
      routes: 3 * n + 2
    }
  end

  def ns_dir(ns) = format("domain_%03d", ns)
  def ns_const(ns) = format("Domain%03d", ns)
  def model_const(i) = format("Model%05d", i)
  def model_file(i) = format("model%05d", i)
  def ns_of(i) = i / MODELS_PER_NAMESPACE
  def full_const(i) = "#{ns_const(ns_of(i))}::#{model_const(i)}"

  WORDS = %w[alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima
             mike november oscar papa quebec romeo sierra tango uniform victor whiskey
             xray yankee zulu amber basalt cobalt dune ember fjord granite harbor].freeze

  def word(k) = WORDS[k % WORDS.size]

  # ---------------------------------------------------------------- writer

  class Writer
    attr_reader :files, :bytes

    def initialize(root)
      @root = root
      @files = 0
      @bytes = 0
      @dirs = {}
    end

    def write(rel, content, mode: 0o644)
      path = File.join(@root, rel)
      dir = File.dirname(path)
      unless @dirs[dir]
        FileUtils.mkdir_p(dir)
        @dirs[dir] = true
      end
      File.binwrite(path, content)
      File.chmod(mode, path)
      @files += 1
      @bytes += content.bytesize
    end
  end

  # ---------------------------------------------------------------- the app

  def generate(n, out)
    w = Writer.new(out)
    c = counts(n)
    static_files(w, n, c)
    (0...n).each { |i| w.write("app/models/#{ns_dir(ns_of(i))}/#{model_file(i)}.rb", model_rb(i, n)) }
    (0...c[:namespaces]).each do |ns|
      ids = (ns * MODELS_PER_NAMESPACE...[(ns + 1) * MODELS_PER_NAMESPACE, n].min).to_a
      w.write("app/controllers/#{ns_dir(ns)}/records_controller.rb", controller_rb(ns, ids))
      w.write("config/routes/#{ns_dir(ns)}.rb", routes_rb(ns, ids))
      w.write("config/initializers/settings_#{ns_dir(ns)}.rb", initializer_rb(ns, ids))
      w.write("config/locales/#{ns_dir(ns)}.en.yml", locale_yml(ns, ids))
    end
    (0...c[:settings_files]).each do |f|
      ids = (f * MODELS_PER_SETTINGS_FILE...[(f + 1) * MODELS_PER_SETTINGS_FILE, n].min).to_a
      ns = ns_of(ids.first)
      w.write(format("config/settings/%s/part_%05d.yml", ns_dir(ns), f), settings_yml(f, ids))
    end
    %w[tmp log].each { |d| FileUtils.mkdir_p(File.join(out, d)) }
    [w, c]
  end

  def model_rb(i, n)
    ns = ns_of(i)
    prev = full_const((i - 1) % n)
    nxt = full_const((i + 1) % n)
    kinds = (0...12).map { |k| "#{word(i + k)}_#{(i * 7 + k) % 1000}" }
    weights = (0...8).map { |k| "#{word(i * 3 + k)}: #{(i * 31 + k * 17) % 97 + 1}" }.join(", ")
    <<~RUBY
      # frozen_string_literal: true

      module #{ns_const(ns)}
        # Generated model #{i} of #{n} for the snapboot demo. It has no table:
        # nothing here queries the database; the cost is in loading it.
        class #{model_const(i)} < ApplicationRecord
          self.table_name = "#{ns_dir(ns)}_#{model_file(i)}s"

          include Auditable
          include Searchable

          belongs_to :owner, class_name: "#{prev}", optional: true, inverse_of: false
          has_many :items, class_name: "#{nxt}", foreign_key: :owner_id, inverse_of: false, dependent: :nullify
          has_one :latest_item, -> { order(id: :desc) }, class_name: "#{nxt}", foreign_key: :owner_id, inverse_of: false

          validates :name, presence: true, length: { maximum: #{100 + i % 50} }
          validates :code, format: { with: /\\AM#{i}-[A-Z0-9]+\\z/ }, allow_nil: true
          validates :quantity, numericality: { greater_than_or_equal_to: 0, less_than: #{1000 + i} }, allow_nil: true

          attribute :priority, :integer, default: #{i % 10}
          attribute :label, :string, default: "#{model_file(i)}"

          scope :active, -> { where(active: true) }
          scope :recent, ->(limit = #{10 + i % 20}) { order(created_at: :desc).limit(limit) }
          scope :named, ->(q) { where("name ILIKE ?", "%\#{sanitize_sql_like(q)}%") }
          scope :in_kind, ->(kind) { where(kind: KINDS.include?(kind) ? kind : nil) }

          before_validation :normalize_#{model_file(i)}
          after_commit :announce_#{model_file(i)}, on: %i[create update]

          KINDS = %w[#{kinds.join(' ')}].freeze
          WEIGHTS = { #{weights} }.freeze

          def self.settings
            DemoSettings.fetch("#{ns_dir(ns)}", "#{model_file(i)}")
          end

          def self.describe
            "\#{model_name.human} (\#{KINDS.size} kinds, \#{WEIGHTS.size} weights)"
          end

          def display_name
            "\#{label}: \#{name}"
          end

          def score(x)
            WEIGHTS.sum { |k, w| w * (x.to_i % (k.size + #{i % 13 + 1})) }
          end

          def kind_label
            KINDS.fetch(priority.to_i % KINDS.size).tr("_", " ").capitalize
          end

          def to_summary
            { id: id, name: name, label: label, kind: kind_label, score: score(#{i}) }
          end

          private

          def normalize_#{model_file(i)}
            self.name = name.to_s.strip.squeeze(" ") if name
            self.code = code.to_s.upcase.presence if code
          end

          def announce_#{model_file(i)}
            Rails.logger.debug { "#{model_file(i)} committed \#{id}" }
          end
        end
      end
    RUBY
  end

  def controller_rb(ns, ids)
    <<~RUBY
      # frozen_string_literal: true

      module #{ns_const(ns)}
        # Serves the generated routes of #{ns_const(ns)} (never called by the demo).
        class RecordsController < ApplicationController
          MODELS = %w[#{ids.map { |i| model_const(i) }.join(' ')}].freeze

          def index
            render json: { namespace: "#{ns_dir(ns)}", model: model.name, description: model.describe }
          end

          def show
            render json: { namespace: "#{ns_dir(ns)}", model: model.name, id: params[:id], settings: model.settings }
          end

          def audit
            render json: { namespace: "#{ns_dir(ns)}", model: model.name, audited: model.audited? }
          end

          private

          def model
            name = params.fetch(:model)
            raise ActionController::RoutingError, "no model \#{name}" unless MODELS.include?(name)
            #{ns_const(ns)}.const_get(name)
          end
        end
      end
    RUBY
  end

  def routes_rb(ns, ids)
    lines = ids.map do |i|
      "  resources :#{model_file(i)}s, only: %i[index show], controller: \"records\", defaults: { model: \"#{model_const(i)}\" } do\n" \
        "    get :audit, on: :member\n" \
        "  end\n"
    end
    "# frozen_string_literal: true\n\nnamespace :#{ns_dir(ns)} do\n#{lines.join}end\n"
  end

  def initializer_rb(ns, ids)
    <<~RUBY
      # frozen_string_literal: true

      # Loads the settings of #{ns_const(ns)} (#{ids.size} models) at boot.
      DemoSettings.load_group("#{ns_dir(ns)}")
      Rails.application.config.x.demo_groups ||= []
      Rails.application.config.x.demo_groups << "#{ns_dir(ns)}"
    RUBY
  end

  def locale_yml(ns, ids)
    s = +"en:\n  activerecord:\n    models:\n"
    ids.each { |i| s << "      #{ns_dir(ns).tr('_', '')}/#{model_file(i)}: \"#{word(i).capitalize} record #{i}\"\n" }
    s << "    attributes:\n"
    ids.each do |i|
      s << "      #{ns_dir(ns).tr('_', '')}/#{model_file(i)}:\n"
      %w[name code quantity priority label].each_with_index do |a, k|
        s << "        #{a}: \"#{a.capitalize} of #{word(i + k)} #{i}\"\n"
      end
    end
    s << "  demo:\n    #{ns_dir(ns)}:\n"
    ids.each { |i| s << "      #{model_file(i)}_help: \"Help for %{name} in #{word(i * 5)} (#{i})\"\n" }
    s
  end

  # A settings file: per model, a nested block of about 60 lines, with an
  # anchor and an alias, as real config files have.
  def settings_yml(f, ids)
    s = +"# Generated settings part #{f}\n"
    s << "defaults: &defaults\n  enabled: true\n  timeout_ms: #{1000 + f}\n  retries: #{f % 5}\n  tags: [#{(0...6).map { |k| word(f + k) }.join(', ')}]\n"
    ids.each do |i|
      s << "#{model_file(i)}:\n"
      s << "  <<: *defaults\n"
      s << "  title: \"#{word(i).capitalize} #{word(i + 1)} #{i}\"\n"
      s << "  limits:\n"
      8.times { |k| s << "    #{word(i + k)}: #{(i * 13 + k * 7) % 5000}\n" }
      s << "  features:\n"
      10.times { |k| s << "    - name: #{word(i * 2 + k)}_#{k}\n      rollout: #{(i + k * 11) % 101}\n      since: \"20#{10 + (i + k) % 15}-0#{1 + k % 9}-1#{k % 9}\"\n" }
      s << "  labels:\n"
      6.times { |k| s << "    #{word(i + 3 * k)}_#{k}: \"#{word(i + k).upcase} #{word(i + k + 5)} label #{i * 10 + k}\"\n" }
      s << "  matrix:\n"
      4.times { |k| s << "    - [#{(0...6).map { |j| (i * (k + 1) + j * 3) % 100 }.join(', ')}]\n" }
    end
    s
  end

  # ------------------------------------------------------- the fixed files

  def static_files(w, n, c)
    w.write("config.ru", <<~RUBY)
      # frozen_string_literal: true

      require_relative "config/environment"

      run Rails.application
      Rails.application.load_server
    RUBY

    w.write("config/boot.rb", <<~RUBY)
      # frozen_string_literal: true

      # No Bundler: the gems are Debian's packages (ruby-rails, ruby-pg, puma),
      # activated by RubyGems from /usr/share/rubygems-integration.
      DEMO_BOOT_STARTED = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      ENV["RAILS_ENV"] ||= "production"
      $stdout.sync = true
      $stderr.sync = true
    RUBY

    w.write("config/application.rb", <<~RUBY)
      # frozen_string_literal: true

      require_relative "boot"

      require "rails"
      # An API app: no Action Mailer, Active Job, Active Storage, Action Cable.
      require "active_model/railtie"
      require "active_record/railtie"
      require "action_controller/railtie"

      require_relative "../lib/demo_settings"
      require_relative "../lib/demo_db"

      module SnapbootDemo
        MODELS = #{n}

        class Application < Rails::Application
          config.load_defaults 7.2
          config.api_only = true
          config.time_zone = "UTC"
          config.yjit = false
        end
      end
    RUBY

    w.write("config/environment.rb", <<~RUBY)
      # frozen_string_literal: true

      require_relative "application"

      Rails.application.initialize!
    RUBY

    w.write("config/environments/production.rb", <<~'RUBY')
      # frozen_string_literal: true

      Rails.application.configure do
        config.enable_reloading = false
        config.eager_load = true
        config.consider_all_requests_local = false
        config.public_file_server.enabled = false

        # No credentials, no master key: the secret comes from the environment.
        config.require_master_key = false
        config.secret_key_base = ENV.fetch("SECRET_KEY_BASE") { "snapboot-demo-not-a-secret-" * 4 }

        # Logs go to stdout only: a restored process must not hold log files.
        config.logger = ActiveSupport::TaggedLogging.new(ActiveSupport::Logger.new($stdout))
        config.log_level = ENV.fetch("RAILS_LOG_LEVEL", "info")
        config.log_tags = [:request_id]

        # Nothing written under tmp/ at run time.
        config.cache_store = :memory_store

        config.i18n.fallbacks = true
        config.active_support.report_deprecations = false
        config.active_record.dump_schema_after_migration = false
      end
    RUBY

    w.write("config/database.yml", <<~'YAML')
      # DATABASE_URL (postgres://user:pass@host:port/db) is the connection;
      # Rails merges it into this entry.
      production:
        adapter: postgresql
        url: <%= ENV.fetch("DATABASE_URL", "postgres://demo:demo@127.0.0.1:5432/demo") %>
        pool: <%= ENV.fetch("RAILS_MAX_THREADS", 5) %>
        # Never close idle connections: the boot connection must still be
        # established when the process is checkpointed, however late.
        idle_timeout: 0
        connect_timeout: 5
    YAML

    w.write("config/puma.rb", <<~'RUBY')
      # frozen_string_literal: true

      # Single mode (no cluster workers): one process to checkpoint.
      app_dir = File.expand_path("..", __dir__)
      directory app_dir
      rackup File.join(app_dir, "config.ru")
      environment ENV.fetch("RAILS_ENV", "production")
      bind "tcp://0.0.0.0:#{Integer(ENV.fetch('PORT', 3000))}"
      threads_count = Integer(ENV.fetch("RAILS_MAX_THREADS", 5))
      threads threads_count, threads_count
      workers 0
      log_requests false
    RUBY

    w.write("config/routes.rb", <<~RUBY)
      # frozen_string_literal: true

      Rails.application.routes.draw do
        root "status#index"
        get "healthz", to: "status#healthz"

      #{(0...c[:namespaces]).map { |ns| "  draw :#{ns_dir(ns)}" }.join("\n")}
      end
    RUBY

    w.write("config/initializers/demo_database.rb", <<~'RUBY')
      # frozen_string_literal: true

      # At the very end of boot (after eager loading and drawing the routes),
      # open the database connection and use it, so the process holds an
      # established connection to PostgreSQL: the checkpoint must contain
      # one. The connection goes back to the pool and stays there, idle.
      Rails.application.config.after_routes_loaded do
        DemoDB.boot_probe! if DemoDB.boot.empty?
      end
    RUBY

    w.write("lib/demo_settings.rb", <<~'RUBY')
      # frozen_string_literal: true

      require "yaml"

      # DemoSettings holds the parsed config/settings/**/*.yml, frozen.
      module DemoSettings
        @groups = {}
        @files = 0

        class << self
          attr_reader :files

          def load_group(group)
            dir = File.expand_path("../config/settings/#{group}", __dir__)
            merged = {}
            Dir.glob(File.join(dir, "*.yml")).sort.each do |path|
              merged.merge!(YAML.safe_load_file(path, aliases: true) || {})
              @files += 1
            end
            @groups[group] = deep_freeze(merged)
          end

          def fetch(group, key)
            @groups.fetch(group, {}).fetch(key, {})
          end

          def groups
            @groups.size
          end

          private

          def deep_freeze(obj)
            case obj
            when Hash then obj.each_value { |v| deep_freeze(v) }
            when Array then obj.each { |v| deep_freeze(v) }
            end
            obj.freeze
          end
        end
      end
    RUBY

    w.write("lib/demo_db.rb", <<~'RUBY')
      # frozen_string_literal: true

      require "socket"

      # DemoDB: the app's database use. The boot probe opens the pool's first
      # connection; every request runs a query on a pooled connection and
      # reconnects once if that connection turns out to be dead (after a
      # CRIU restore, established TCP connections come back closed).
      module DemoDB
        BOOT_TABLE_SQL = <<~SQL
          CREATE TABLE IF NOT EXISTS demo_boots (
            id bigserial PRIMARY KEY,
            booted_at timestamptz NOT NULL DEFAULT now(),
            hostname text,
            pid integer,
            models integer,
            boot_seconds double precision
          )
        SQL

        STATUS_SQL = "SELECT now() AS db_now, pg_backend_pid() AS backend_pid, " \
                     "(SELECT count(*) FROM demo_boots) AS boots"

        @mutex = Mutex.new
        @retries = 0
        @backend_pids = {}
        @boot = {}

        class << self
          attr_reader :boot

          # What GET / reports about the connections: how many distinct
          # PostgreSQL backends this process has used since boot (2 after a
          # restore: the donor's, then the reconnected one), and how often the
          # status query itself had to reconnect and retry.
          def connection_stats
            @mutex.synchronize { { db_connections_seen: @backend_pids.size, query_retries: @retries } }
          end

          # Connects (waiting up to DEMO_DB_BOOT_TIMEOUT seconds for the
          # database), creates demo_boots if missing and records this boot.
          def boot_probe!
            boot_seconds = Process.clock_gettime(Process::CLOCK_MONOTONIC) - DEMO_BOOT_STARTED
            deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + Float(ENV.fetch("DEMO_DB_BOOT_TIMEOUT", "60"))
            attempt = 0
            begin
              attempt += 1
              row = ActiveRecord::Base.connection_pool.with_connection do |c|
                c.execute(BOOT_TABLE_SQL)
                c.select_one(<<~SQL)
                  INSERT INTO demo_boots (hostname, pid, models, boot_seconds)
                  VALUES (#{c.quote(Socket.gethostname)}, #{Process.pid}, #{SnapbootDemo::MODELS}, #{boot_seconds.round(3)})
                  RETURNING id, booted_at, pg_backend_pid() AS backend_pid
                SQL
              end
            rescue ActiveRecord::RecordNotUnique
              # Two first boots creating demo_boots at once: the loser retries.
              retry if attempt < 3
              raise
            rescue ActiveRecord::ConnectionNotEstablished, ActiveRecord::StatementInvalid => e
              raise unless connection_error?(e) && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
              Rails.logger.warn("demo: database not reachable yet (#{first_line(e)}), retrying")
              sleep 0.5
              retry
            end
            @boot = {
              boot_id: row["id"], booted_at: row["booted_at"].to_s, boot_seconds: boot_seconds.round(3),
              boot_backend_pid: row["backend_pid"]
            }
            seen(row["backend_pid"])
            Rails.logger.info("demo: booted in #{format('%.2f', boot_seconds)} s, models=#{SnapbootDemo::MODELS}, " \
                              "settings_files=#{DemoSettings.files}, routes=#{Rails.application.routes.routes.size}, " \
                              "db backend pid #{row['backend_pid']}")
          end

          # The status query of GET /, on a pooled connection. Rails verifies
          # a connection when it is checked out and reconnects a dead one; if
          # the connection dies anyway (or was already checked out), the
          # query reconnects and runs once more.
          def status
            row = ActiveRecord::Base.connection_pool.with_connection do |c|
              retried = false
              begin
                c.select_one(STATUS_SQL)
              rescue ActiveRecord::ConnectionNotEstablished, ActiveRecord::StatementInvalid => e
                raise if retried || !connection_error?(e)
                retried = true
                @mutex.synchronize { @retries += 1 }
                Rails.logger.warn("demo: database connection lost (#{first_line(e)}), reconnecting")
                c.reconnect!
                retry
              end
            end
            seen(row["backend_pid"])
            row
          end

          def seen(backend_pid)
            @mutex.synchronize { @backend_pids[backend_pid] = true }
          end

          def connection_error?(e)
            return true if e.is_a?(ActiveRecord::ConnectionNotEstablished)
            return true if defined?(ActiveRecord::ConnectionFailed) && e.is_a?(ActiveRecord::ConnectionFailed)
            cause = e.cause
            defined?(PG) && (cause.is_a?(PG::ConnectionBad) || cause.is_a?(PG::UnableToSend)) ? true : false
          end

          def first_line(e)
            "#{e.class}: #{e.message.lines.first.to_s.strip}"
          end
        end
      end
    RUBY

    w.write("app/models/application_record.rb", <<~RUBY)
      # frozen_string_literal: true

      class ApplicationRecord < ActiveRecord::Base
        primary_abstract_class
      end
    RUBY

    w.write("app/models/concerns/auditable.rb", <<~RUBY)
      # frozen_string_literal: true

      module Auditable
        extend ActiveSupport::Concern

        included do
          class_attribute :audit_tag, default: name.underscore.tr("/", ".")
          before_save :stamp_audit
        end

        class_methods do
          def audited?
            true
          end
        end

        def stamp_audit
          @audited_at = Time.current
        end
      end
    RUBY

    w.write("app/models/concerns/searchable.rb", <<~RUBY)
      # frozen_string_literal: true

      module Searchable
        extend ActiveSupport::Concern

        class_methods do
          def search(term)
            term.blank? ? all : named(term)
          end
        end
      end
    RUBY

    w.write("app/controllers/application_controller.rb", <<~RUBY)
      # frozen_string_literal: true

      class ApplicationController < ActionController::API
      end
    RUBY

    w.write("app/controllers/status_controller.rb", <<~'RUBY')
      # frozen_string_literal: true

      # GET / runs a query on every request; GET /healthz touches nothing.
      class StatusController < ApplicationController
        def index
          row = DemoDB.status
          render json: {
            status: "ok",
            models: SnapbootDemo::MODELS,
            pid: Process.pid,
            uptime_s: (Process.clock_gettime(Process::CLOCK_MONOTONIC) - DEMO_BOOT_STARTED).round(3),
            db_now: row["db_now"].to_s,
            db_backend_pid: row["backend_pid"],
            boots: row["boots"]
          }.merge(DemoDB.boot).merge(DemoDB.connection_stats)
        end

        def healthz
          render plain: "ok\n"
        end
      end
    RUBY

    w.write("bin/rails", <<~RUBY, mode: 0o755)
      #!/usr/bin/ruby
      # frozen_string_literal: true

      APP_PATH = File.expand_path("../config/application", __dir__)
      require_relative "../config/boot"
      require "rails/commands"
    RUBY

    w.write("README", <<~TEXT)
      snapboot demo app, generated by demo/app/generate.rb with --models #{n}.
      #{c.map { |k, v| "#{k}=#{v}" }.join(' ')}
      Start: cd /app && puma -C config/puma.rb   (env: DATABASE_URL, PORT, SECRET_KEY_BASE)
    TEXT
  end
end

if $PROGRAM_NAME == __FILE__ || $PROGRAM_NAME == "-"
  models = DemoGen::DEFAULT_MODELS
  out = nil
  force = false
  OptionParser.new do |o|
    o.banner = "usage: generate.rb [--models N] --out DIR [--force]"
    o.on("--models N", Integer, "number of models (1..99999, default #{DemoGen::DEFAULT_MODELS})") { |v| models = v }
    o.on("--out DIR", "output directory (must not exist, unless --force)") { |v| out = v }
    o.on("--force", "replace DIR if it exists") { force = true }
  end.parse!
  abort "generate.rb: --models must be at least 1" unless models.positive?
  abort "generate.rb: --models must be at most 99999" if models > 99_999
  abort "generate.rb: --out DIR is required" unless out
  if File.exist?(out)
    abort "generate.rb: #{out} exists (use --force to replace it)" unless force
    FileUtils.rm_rf(out)
  end
  t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  w, c = DemoGen.generate(models, out)
  dt = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
  warn format("generate.rb: %s: %d files, %.1f MB in %.1f s (%s)", out, w.files, w.bytes / 1e6, dt,
              c.map { |k, v| "#{k}=#{v}" }.join(" "))
end
