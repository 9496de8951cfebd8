/*
 * mosquitto 2.0 plugin for ca-bridge: client ids are bound to the credentials that own them.
 *
 * MQTT lets a new CONNECT with an existing client id replace the connected client and take over its saved
 * session. mosquitto itself only offers `use_username_as_clientid` (one id per user: a CA's second session, or a
 * second bridge of a cluster, would replace the first) and the dynamic-security plugin (binds a user to one exact
 * client id: same problem). This plugin reads a file of client-id prefixes and their owners, written by
 * `ca-bridge device add/remove` (mosquitto.clientids in the auth directory):
 *
 *     ca-bridge- ca-bridge        # <client id prefix> <username>
 *     ca-shop1- shop1
 *     shop1- shop1
 *
 * A CONNECT whose client id starts with a listed prefix is refused (CONNACK "not authorised") unless its username
 * is that prefix's owner; the longest matching prefix decides (so "ca-shop-1-x" belongs to device "shop-1", not to
 * "shop"). A client id that matches no prefix is left alone. mosquitto replaces an existing connection only after
 * authentication succeeded, so a refused CONNECT never touches the other client's connection or session. Everything
 * else (passwords, ACL) is left to password_file and acl_file: this plugin only ever refuses or defers.
 *
 * Build (needs the mosquitto-dev package for the headers):
 *     cc -shared -fPIC -O2 -Wall -o ca_bridge_clientids.so broker_config/ca_bridge_clientids.c
 * mosquitto.conf:
 *     plugin /path/to/ca_bridge_clientids.so
 *     plugin_opt_clientid_file /etc/ca-bridge/devices.auth/mosquitto.clientids
 * The file is reread on SIGHUP (the same signal that rereads the password file and the ACL).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

struct rule {
	char *prefix;
	size_t len;
	char *owner;
};

struct rules {
	struct rule *items;
	size_t count;
};

static mosquitto_plugin_id_t *plugin_id = NULL;
static char *rules_path = NULL;
static struct rules current = {NULL, 0};

static void rules_free(struct rules *r)
{
	size_t i;

	for(i = 0; i < r->count; i++){
		free(r->items[i].prefix);
		free(r->items[i].owner);
	}
	free(r->items);
	r->items = NULL;
	r->count = 0;
}

/* Parse the file into *out. Lines: "<prefix> <owner>"; blank lines and lines starting with # are skipped. */
static int rules_read(const char *path, struct rules *out)
{
	FILE *f;
	char line[1024];
	size_t cap = 0;
	struct rules r = {NULL, 0};

	f = fopen(path, "r");
	if(f == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "ca_bridge_clientids: cannot read %s", path);
		return MOSQ_ERR_UNKNOWN;
	}
	while(fgets(line, sizeof(line), f)){
		char *prefix;
		char *owner;
		int c;

		if(strchr(line, '\n') == NULL && !feof(f)){
			/* longer than any line the CLI writes: skip all of it rather than read its tail as a rule */
			while((c = fgetc(f)) != EOF && c != '\n'){
			}
			mosquitto_log_printf(MOSQ_LOG_WARNING, "ca_bridge_clientids: ignoring an overlong line in %s", path);
			continue;
		}
		prefix = strtok(line, " \t\r\n");
		owner = strtok(NULL, " \t\r\n");
		if(prefix == NULL || prefix[0] == '#'){
			continue;
		}
		if(owner == NULL){
			mosquitto_log_printf(MOSQ_LOG_WARNING, "ca_bridge_clientids: ignoring a line without owner in %s", path);
			continue;
		}
		if(r.count == cap){
			size_t ncap = cap ? cap * 2 : 64;
			struct rule *grown = realloc(r.items, ncap * sizeof(struct rule));
			if(grown == NULL){
				fclose(f);
				rules_free(&r);
				return MOSQ_ERR_NOMEM;
			}
			r.items = grown;
			cap = ncap;
		}
		r.items[r.count].prefix = strdup(prefix);
		r.items[r.count].owner = strdup(owner);
		r.items[r.count].len = strlen(prefix);
		r.count++;
		if(r.items[r.count - 1].prefix == NULL || r.items[r.count - 1].owner == NULL){
			fclose(f);
			rules_free(&r);
			return MOSQ_ERR_NOMEM;
		}
	}
	fclose(f);
	*out = r;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "ca_bridge_clientids: %lu client id prefixes from %s",
			(unsigned long)r.count, path);
	return MOSQ_ERR_SUCCESS;
}

/* The owner of the longest prefix of client_id, or NULL if no prefix matches. */
static const char *owner_of(const char *client_id)
{
	const struct rule *best = NULL;
	size_t i;

	for(i = 0; i < current.count; i++){
		const struct rule *r = &current.items[i];
		if((best == NULL || r->len > best->len) && strncmp(client_id, r->prefix, r->len) == 0){
			best = r;
		}
	}
	return best ? best->owner : NULL;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	const char *owner;

	(void)event;
	(void)userdata;
	if(client_id == NULL){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	owner = owner_of(client_id);
	if(owner != NULL && (ed->username == NULL || strcmp(owner, ed->username) != 0)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"ca_bridge_clientids: refused client %s: its client id belongs to another user", client_id);
		return MOSQ_ERR_AUTH;
	}
	return MOSQ_ERR_PLUGIN_DEFER; /* the password file decides */
}

static int on_reload(int event, void *event_data, void *userdata)
{
	struct rules fresh;

	(void)event;
	(void)event_data;
	(void)userdata;
	if(rules_read(rules_path, &fresh) == MOSQ_ERR_SUCCESS){
		rules_free(&current);
		current = fresh;
	}else{
		mosquitto_log_printf(MOSQ_LOG_WARNING, "ca_bridge_clientids: keeping the previous client id prefixes");
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **user_data, struct mosquitto_opt *opts,
		int opt_count)
{
	int i;
	int rc;

	(void)user_data;
	for(i = 0; i < opt_count; i++){
		if(strcmp(opts[i].key, "clientid_file") == 0){
			free(rules_path);
			rules_path = strdup(opts[i].value);
		}
	}
	if(rules_path == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "ca_bridge_clientids: plugin_opt_clientid_file is required");
		return MOSQ_ERR_INVAL;
	}
	rc = rules_read(rules_path, &current);
	if(rc != MOSQ_ERR_SUCCESS){
		return rc;
	}
	plugin_id = identifier;
	rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL);
	}
	return rc;
}

int mosquitto_plugin_cleanup(void *user_data, struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	(void)opts;
	(void)opt_count;
	if(plugin_id != NULL){
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
	}
	rules_free(&current);
	free(rules_path);
	rules_path = NULL;
	return MOSQ_ERR_SUCCESS;
}
